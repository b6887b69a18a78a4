"""``launchbay jobs submit-batch FILE``: reading a batch (fast) and submitting it to a real
stack (all or nothing, the refused spec named, a non-zero exit)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from orchestrator.cli._specs import MAX_BATCH, SpecInputError, load_batch_file
from tests.cli.conftest import Cli
from tests.support import Stack

FIB = {"executor": "builtin", "type": "fibonacci", "params": {"count": 5}}


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_batch_file_is_a_list_a_jobs_mapping_yaml_or_json_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    two = [FIB, {**FIB, "name": "b"}]
    assert load_batch_file(write(tmp_path, "a.json", json.dumps(two))) == two
    assert load_batch_file(write(tmp_path, "b.json", json.dumps({"jobs": two}))) == two
    yaml_text = "- executor: builtin\n  type: fibonacci\n- executor: process\n  command: [true]\n"
    assert [s["executor"] for s in load_batch_file(write(tmp_path, "c.yaml", yaml_text))] == [
        "builtin",
        "process",
    ]
    lines = "\n".join(json.dumps(s) for s in two) + "\n"
    assert load_batch_file(write(tmp_path, "d.jsonl", lines)) == two
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert load_batch_file("-") == two


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[]", "holds no job specs"),
        ('{"executor": "builtin"}', "must hold a list of job specs"),
        ('[{"executor": "builtin"}, 3]', "jobs[1] is a int"),
        ('{"executor": "builtin"}\n{"executor": oops}\n', "line 2 is not JSON"),
        (json.dumps([FIB] * (MAX_BATCH + 1)), f"at most {MAX_BATCH}"),
        ("- [unclosed\n", "is not valid YAML"),
    ],
)
def test_a_bad_batch_file_is_refused_before_asking_the_server(
    tmp_path: Path, text: str, says: str
) -> None:
    with pytest.raises(SpecInputError) as refused:
        load_batch_file(write(tmp_path, "bad.txt", text))
    assert says in str(refused.value)
    with pytest.raises(SpecInputError, match="does not exist"):
        load_batch_file(str(tmp_path / "missing.json"))


def test_submit_batch_prints_the_ids_in_order_and_the_jobs_run(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    specs = [{**FIB, "name": f"cli-batch-{i}"} for i in range(3)]
    r = cli("jobs", "submit-batch", write(tmp_path, "batch.json", json.dumps(specs)))
    assert r.code == 0, r
    ids = r.out.split()
    assert len(ids) == 3 and "submitted 3 job(s)" in r.err, r
    done = [stack.wait_status(i, timeout=60) for i in ids]
    assert [d["name"] for d in done] == [s["name"] for s in specs]
    assert all(d["status"] == "succeeded" for d in done), done
    piped = cli("jobs", "submit-batch", "-", "--json", stdin=json.dumps({"jobs": specs[:1]}))
    assert piped.code == 0, piped
    (job,) = json.loads(piped.out)
    assert job["name"] == "cli-batch-0" and job["status"] == "queued"


def test_submit_batch_refuses_a_bad_spec_naming_it_and_makes_nothing(
    cli: Cli, stack: Stack, tmp_path: Path
) -> None:
    before = stack.http.get("/api/v1/jobs", params={"limit": 1}).json()["total"]
    bad = [FIB, {**FIB, "params": {"count": "many"}}]
    r = cli("jobs", "submit-batch", write(tmp_path, "bad.json", json.dumps(bad)))
    assert r.code == 2, r
    r.assert_one_error_line()
    assert "jobs[1].params" in r.err, r
    assert stack.http.get("/api/v1/jobs", params={"limit": 1}).json()["total"] == before
    missing = cli("jobs", "submit-batch", str(tmp_path / "none.json"))
    assert missing.code == 2 and "does not exist" in missing.err, missing
