from tests.support import Stack


def test_countdown_succeeds(stack: Stack) -> None:
    job = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 1}})
    done = stack.wait_status(job["id"], timeout=20)
    assert done["status"] == "succeeded"
    assert done["progress"]["percent"] == 100
