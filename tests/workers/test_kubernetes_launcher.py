"""The kubernetes launcher: every manifest validates against the Kubernetes schema, and the
whole lifecycle runs through the real ``kubernetes`` client against FakeKubernetes — an
in-process FAKE of the batch/v1 and core/v1 endpoints the launcher calls (not a cluster).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from orchestrator.errors import RunnerLaunchError
from tests.support import wait_until
from tests.workers.conftest import MakeCtx
from workers.launchers import launcher_class
from workers.launchers._k8s_manifest import ManifestError, validate_job_manifest
from workers.launchers.kubernetes import KubernetesConfig, KubernetesLauncher
from workers.testing import FakeKubernetes, RecordingReporter

K8S_VERSION = kubernetes_validate.latest_version()


def schema_valid(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


@pytest.fixture
def fake_kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture
def launcher(
    launch_settings,
    fake_kube: FakeKubernetes,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> KubernetesLauncher:
    # Through a kubeconfig file, as a worker outside the cluster would connect.
    kubeconfig = fake_kube.write_kubeconfig(tmp_path / "kubeconfig")
    return KubernetesLauncher(
        launch_settings, KubernetesConfig(kubeconfig=str(kubeconfig), poll_s=0.05)
    )


def _spec(**extra: Any) -> dict[str, Any]:
    return {
        "executor": "kubernetes",
        "image": "busybox:1.36",
        "command": ["sh", "-c", "echo hello; echo ::progress 50 half"],
        **extra,
    }


def test_registry_names_the_kubernetes_launcher() -> None:
    assert launcher_class("kubernetes") is KubernetesLauncher


# ------------------------------------------------------------------ manifests


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "timeout_s": 30,
            "resources": {"cpu": 0.5, "memory_mb": 256},
            "namespace": "batch",
            "labels": {"team": "data", "bad label!": "x"},
            "env": {"A": "1"},
            "grace_s": 3,
        },
        {
            "template": {
                "metadata": {"annotations": {"owner": "me"}},
                "spec": {
                    "backoffLimit": 6,
                    "template": {
                        "spec": {
                            "restartPolicy": "OnFailure",
                            "nodeSelector": {"disk": "ssd"},
                            "tolerations": [
                                {"key": "batch", "operator": "Exists", "effect": "NoSchedule"}
                            ],
                            "containers": [
                                {
                                    "name": "job",
                                    "image": "ignored",
                                    "env": [{"name": "B", "value": "2"}],
                                }
                            ],
                        }
                    },
                },
            }
        },
    ],
)
def test_generated_manifests_validate_against_the_schema(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, extra: dict[str, Any]
) -> None:
    ctx = make_ctx(_spec(**extra))
    manifest = launcher.manifest(ctx)
    schema_valid(manifest)
    spec, pod = manifest["spec"], manifest["spec"]["template"]["spec"]
    assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert manifest["metadata"]["labels"]["launchbay.job_id"] == ctx.job_id
    assert manifest["spec"]["template"]["metadata"]["labels"]["launchbay.attempt"] == "1"
    container = next(c for c in pod["containers"] if c["name"] == "job")
    assert container["image"] == "busybox:1.36"
    assert container["securityContext"]["privileged"] is False
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LAUNCHBAY_JOB_ID"] == ctx.job_id and env["LAUNCHBAY_ATTEMPT"] == "1"
    assert '"workspace": "/workspace"' in env["LAUNCHBAY_CONTEXT"]
    if "timeout_s" in extra:
        assert spec["activeDeadlineSeconds"] >= 30
        assert container["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}
        assert manifest["metadata"]["namespace"] == "batch"
        assert manifest["metadata"]["labels"]["team"] == "data"
        assert "bad label!" not in manifest["metadata"]["labels"]
        assert pod["terminationGracePeriodSeconds"] == 3
    if "template" in extra:
        assert pod["nodeSelector"] == {"disk": "ssd"}
        assert manifest["metadata"]["annotations"]["owner"] == "me"
        assert {"name": "B", "value": "2"} in container["env"]


def test_workspace_claim_mounts_the_attempts_sub_path(
    launch_settings,  # type: ignore[no-untyped-def]
    make_ctx: MakeCtx,
) -> None:
    launcher = KubernetesLauncher(launch_settings, KubernetesConfig(workspace_claim="lb-ws"))
    ctx = make_ctx(_spec())
    manifest = launcher.manifest(ctx)
    schema_valid(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "lb-ws"}}
    ]
    assert pod["containers"][0]["volumeMounts"][0]["subPath"] == f"{ctx.job_id}/a1"


@pytest.mark.parametrize(
    "template, why",
    [
        ({"spec": {"template": {"spec": {"hostNetwork": True}}}}, "hostNetwork"),
        (
            {
                "spec": {
                    "template": {"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}
                }
            },
            "hostPath",
        ),
        (
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "side",
                                    "image": "x",
                                    "securityContext": {"privileged": True},
                                }
                            ]
                        }
                    }
                }
            },
            "privileged",
        ),
    ],
)
def test_unsafe_templates_fail_at_once(
    launcher: KubernetesLauncher,
    make_ctx: MakeCtx,
    fake_kube: FakeKubernetes,
    template: dict[str, Any],
    why: str,
) -> None:
    # A spec refuses such a template at submit (issue 16); the launcher still checks the
    # merged Job, for a spec stored before that check.
    with pytest.raises(ValueError, match=why):
        make_ctx(_spec(template=template))
    ctx = make_ctx(_spec())
    ctx.spec = ctx.spec.model_copy(update={"template": template})
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(ctx)
    assert err.value.transient is False and why in str(err.value)
    assert fake_kube.jobs == {}


def test_validator_refuses_broken_invariants() -> None:
    good = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x", "namespace": "d"},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 1,
            "template": {
                "metadata": {"labels": {"launchbay.job_id": "j", "launchbay.attempt": "1"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "i"}]},
            },
        },
    }
    validate_job_manifest(good)
    for path, value in [
        (("spec", "backoffLimit"), 2),
        (("spec", "template", "spec", "restartPolicy"), "OnFailure"),
    ]:
        bad: Any = __import__("copy").deepcopy(good)
        target = bad
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ManifestError):
            validate_job_manifest(bad)
    with pytest.raises(ManifestError, match="activeDeadlineSeconds"):
        validate_job_manifest(good, timeout_s=10)


# ------------------------------------------------------------------ lifecycle (fake API)


def test_job_runs_to_success_and_logs_are_followed(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, fake_kube: FakeKubernetes
) -> None:
    ctx = make_ctx(_spec())
    handle = launcher.start(ctx)
    assert handle.startswith("default/lb-")
    manifest = fake_kube.jobs[tuple(handle.split("/"))]  # type: ignore[index]
    schema_valid({k: v for k, v in manifest.items() if k != "status"})
    rep = RecordingReporter()
    out = launcher.follow(ctx, handle, rep)
    assert out.ok and out.exit_code == 0
    assert rep.text() == ["hello", "::progress 50 half"]
    launcher.cleanup(ctx, handle)
    wait_until(lambda: not fake_kube.jobs, timeout=10, what="the Job to be deleted")
    assert ("POST", "/apis/batch/v1/namespaces/default/jobs") in fake_kube.requests


def test_exit_code_of_the_pod_is_the_jobs(launcher: KubernetesLauncher, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(_spec(command=["sh", "-c", "echo bye; exit 4"]))
    rep = RecordingReporter()
    out = launcher.follow(ctx, launcher.start(ctx), rep)
    assert out.exit_code == 4 and rep.text() == ["bye"]


def test_cancel_deletes_the_job_with_foreground_propagation(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, fake_kube: FakeKubernetes
) -> None:
    ctx = make_ctx(
        _spec(
            command=["sh", "-c", "trap 'echo term; exit 143' TERM; echo ready; sleep 300 & wait"],
            grace_s=5,
        )
    )
    handle = launcher.start(ctx)
    rep = RecordingReporter()
    outcome: dict[str, Any] = {}
    t = threading.Thread(target=lambda: outcome.setdefault("o", launcher.follow(ctx, handle, rep)))
    t.start()
    assert rep.wait_for_line("ready")
    assert len(fake_kube.running_processes()) == 1
    launcher.stop(handle, grace_s=5)
    t.join(30)
    assert not t.is_alive()
    ns, name = handle.split("/")
    assert fake_kube.deletions == [(ns, name, "Foreground")]
    assert fake_kube.jobs == {} and fake_kube.pods == {}
    assert fake_kube.running_processes() == []
    assert outcome["o"].ok is False
    launcher.stop(handle, grace_s=5)  # idempotent: the Job is already gone


def test_transient_api_errors_are_retryable_and_conflicts_are_adopted(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, fake_kube: FakeKubernetes
) -> None:
    ctx = make_ctx(_spec())
    fake_kube.fail_next("POST", "/jobs", 503)
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(ctx)
    assert err.value.transient is True and "503" in str(err.value)
    handle = launcher.start(ctx)
    # A retry whose first try did reach the server finds the Job there and follows it.
    assert launcher.start(ctx) == handle
    assert launcher.follow(ctx, handle, RecordingReporter()).ok


def test_invalid_manifest_rejected_by_the_api_is_permanent(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, fake_kube: FakeKubernetes
) -> None:
    fake_kube.fail_next("POST", "/jobs", 422)
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(make_ctx(_spec()))
    assert err.value.transient is False


def test_unreachable_api_is_transient(launch_settings, make_ctx: MakeCtx) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.services import free_port

    launcher = KubernetesLauncher(
        launch_settings, KubernetesConfig(host=f"http://127.0.0.1:{free_port()}")
    )
    launcher.apis()[0].api_client.configuration.retries = 0
    with pytest.raises(RunnerLaunchError) as err:
        launcher.start(make_ctx(_spec()))
    assert err.value.transient is True and "\n" not in str(err.value)


def test_image_that_cannot_be_pulled_fails_the_job(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, fake_kube: FakeKubernetes
) -> None:
    fake_kube.missing_images.add("nope:1")
    ctx = make_ctx(_spec(image="nope:1"))
    out = launcher.follow(ctx, launcher.start(ctx), RecordingReporter())
    assert out.error is not None and "ErrImagePull" in out.error


def test_deadline_ends_the_job(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, launch_settings
) -> None:  # type: ignore[no-untyped-def]
    launcher.config.deadline_margin_s = 0
    ctx = make_ctx(_spec(command=["sleep", "300"], timeout_s=1, grace_s=1))
    out = launcher.follow(ctx, launcher.start(ctx), RecordingReporter())
    assert out.error is not None and "DeadlineExceeded" in out.error


def test_orphans_are_running_jobs_of_attempts_no_longer_live(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, fake_kube: FakeKubernetes
) -> None:
    ctx = make_ctx(_spec(command=["sleep", "300"]))
    handle = launcher.start(ctx)
    assert launcher.orphans(lambda j, a: True) == []
    assert launcher.orphans(lambda j, a: j != ctx.job_id) == [handle]
    launcher.remove(handle)
    wait_until(lambda: not fake_kube.jobs, timeout=30, what="the orphan Job to go")
    assert fake_kube.running_processes() == []


def test_worker_reads_launcher_config_from_the_environment(
    launch_settings,  # type: ignore[no-untyped-def]
    make_ctx: MakeCtx,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.launchers import LauncherSet

    monkeypatch.setenv("LAUNCHBAY_KUBE_TTL_SECONDS_AFTER_FINISHED", "60")
    monkeypatch.setenv("LAUNCHBAY_KUBE_SERVICE_ACCOUNT", "jobs")
    launcher = LauncherSet(launch_settings).get("kubernetes")
    manifest = launcher.manifest(make_ctx(_spec()))  # type: ignore[attr-defined]
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 60
    assert manifest["spec"]["template"]["spec"]["serviceAccountName"] == "jobs"
    schema_valid(manifest)


def test_a_host_without_docker_or_kubernetes_runs_the_rest(tmp_path: Path) -> None:
    import subprocess
    import sys

    # Block both packages, then import the worker side and run a process job.
    script = (
        "import sys\n"
        "sys.modules['docker'] = None; sys.modules['kubernetes'] = None\n"
        "from pathlib import Path\n"
        "from orchestrator.errors import RunnerLaunchError\n"
        "from orchestrator.job import DockerSpec, ProcessSpec\n"
        "from orchestrator.settings import Settings\n"
        "from workers.launchers import LaunchContext, LauncherSet\n"
        "from workers.testing import RecordingReporter\n"
        "import workers.attempt, workers.channels.direct, workers.channels.http\n"
        f"s = Settings(home=Path({str(tmp_path)!r}))\n"
        f"ws = Path({str(tmp_path)!r})\n"
        "ls = LauncherSet(s)\n"
        "c = LaunchContext('j', 1, 'r', ProcessSpec(command=['echo', 'ok']), ws, s)\n"
        "p = ls.get('process'); rep = RecordingReporter()\n"
        "assert p.follow(c, p.start(c), rep).ok and rep.text() == ['ok']\n"
        "d = LaunchContext('j', 1, 'r', DockerSpec(image='x', steps=[{'name': 'a', "
        "'command': ['true']}]), ws, s)\n"
        "try:\n"
        "    ls.get('docker').start(d)\n"
        "except RunnerLaunchError as e:\n"
        "    assert not e.transient and 'not installed' in str(e), e\n"
        "    print('docker refused:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (
        "docker refused: docker launcher failed on launch attempt 1: the 'docker' "
        "package is not installed" in out.stdout
    )


def test_artifacts_without_a_shared_workspace_fail_at_once(
    launcher: KubernetesLauncher, make_ctx: MakeCtx, fake_kube: FakeKubernetes
) -> None:
    with pytest.raises(RunnerLaunchError, match="WORKSPACE_CLAIM") as err:
        launcher.start(make_ctx(_spec(artifacts=["out/*"])))
    assert err.value.transient is False and fake_kube.jobs == {}
