"""deploy/k8s: every manifest validates against the Kubernetes schema, and they fit together.

Standard kinds are validated strictly (unknown fields are errors) with kubernetes-validate
against two schema versions it ships: 1.29 (the oldest we claim) and its newest. KEDA's
ScaledObject and TriggerAuthentication are CRDs the package cannot know, so they are
checked against JSON schemas written here from KEDA v2's CRDs (the fields we use and their
types), and the ScaledObject's embedded HPA behaviour is validated as part of a real
HorizontalPodAutoscaler. The autoscalers' metric is read from the API's real route, on an
in-memory store, at the very URL the ScaledObject names.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi import FastAPI

from api.routes import meta
from orchestrator.job import JobStatus
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core
from tests.deploy.conftest import HANDBACK_MARGIN_S, JOB_GRACE_S, least_stop_grace_s

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
WORKLOADS = ("Deployment", "StatefulSet")
SERVICES = {
    "api": "launchbay-api",
    "worker": "launchbay-worker",
    "beat": "launchbay-beat",
    "flower": "launchbay-flower",
}


def _load() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((str(path.relative_to(K8S)), doc))
    return docs


DOCS = _load()
BASE = [d for f, d in DOCS if not f.startswith("alternatives/")]
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _ids(item: tuple[str, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['kind']}/{item[1]['metadata']['name']}"


def _find(kind: str, name: str, docs: list[dict[str, Any]] = BASE) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} defined {len(found)} times"
    return found[0]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


# KEDA v2 ScaledObject (keda.sh/v1alpha1), from its CRD: the fields Launchbay uses, typed.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "namespace": {"type": "string"},
                "labels": {"type": "object"},
            },
        },
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": {"type": "integer"},
                        "replicas": {"type": "integer"},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": [
                                            "TriggerAuthentication",
                                            "ClusterTriggerAuthentication",
                                        ]
                                    },
                                },
                            },
                            # KEDA reads every trigger setting as a string
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}
# KEDA v2 TriggerAuthentication (keda.sh/v1alpha1): secrets handed to a trigger.
TRIGGER_AUTHENTICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": SCALED_OBJECT_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string", "minLength": 1},
                            "name": {"type": "string", "minLength": 1},
                            "key": {"type": "string", "minLength": 1},
                        },
                    },
                },
                "env": {"type": "array"},
                "hashiCorpVault": {"type": "object"},
                "podIdentity": {"type": "object"},
            },
        },
    },
}
# The keys KEDA's metrics-api scaler reads from a trigger's metadata (authentication
# secrets come from the TriggerAuthentication, never from here).
METRICS_API_TRIGGER_KEYS = {
    "url",
    "format",
    "valueLocation",
    "targetValue",
    "activationTargetValue",
    "unsafeSsl",
    "authMode",
    "method",
    "keyParamName",
}


# ------------------------------------------------------------------ schema validation


def test_there_are_manifests_for_every_part() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in BASE}
    for name in SERVICES.values():
        assert ("Deployment", name) in kinds
    for needed in [
        ("Service", "launchbay-api"),
        ("Service", "launchbay-flower"),
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("ConfigMap", "launchbay-config"),
        ("Secret", "launchbay-secrets"),
        ("ServiceAccount", "launchbay-worker"),
        ("Role", "launchbay-worker"),
        ("RoleBinding", "launchbay-worker"),
        ("ScaledObject", "launchbay-worker"),
        ("TriggerAuthentication", "launchbay-api-token"),
    ]:
        assert needed in kinds, needed
    assert ("HorizontalPodAutoscaler", "launchbay-worker") in {
        (d["kind"], d["metadata"]["name"]) for _, d in DOCS
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("item", [i for i in DOCS if i[1]["kind"] not in KEDA_KINDS], ids=_ids)
def test_manifest_validates_against_the_kubernetes_schema(
    item: tuple[str, dict[str, Any]], version: str
) -> None:
    kubernetes_validate.validate(item[1], version, strict=True)


def test_an_invalid_manifest_is_caught() -> None:
    """The validation above can fail: a misspelt field is an error."""
    api = copy.deepcopy(_find("Deployment", "launchbay-api"))
    api["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, VERSIONS[-1], strict=True)


def test_keda_objects_match_the_keda_schema() -> None:
    so = _find("ScaledObject", "launchbay-worker")
    jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
    for trigger in so["spec"]["triggers"]:
        assert trigger["type"] == "metrics-api"
        assert set(trigger["metadata"]) <= METRICS_API_TRIGGER_KEYS, trigger["metadata"]
        assert {"url", "valueLocation", "targetValue"} <= set(trigger["metadata"])
        assert float(trigger["metadata"]["targetValue"]) > 0
    broken = copy.deepcopy(so)
    broken["spec"]["triggers"][0]["metadata"]["targetValue"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)
    auth = _find("TriggerAuthentication", "launchbay-api-token")
    jsonschema.validate(auth, TRIGGER_AUTHENTICATION_SCHEMA)
    broken = copy.deepcopy(auth)
    del broken["spec"]["secretTargetRef"][0]["key"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, TRIGGER_AUTHENTICATION_SCHEMA)


@pytest.mark.parametrize("version", VERSIONS)
def test_scaled_object_hpa_behaviour_is_a_valid_hpa_behaviour(version: str) -> None:
    so = _find("ScaledObject", "launchbay-worker")
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "probe"},
        "spec": {
            "scaleTargetRef": so["spec"]["scaleTargetRef"],
            "minReplicas": 1,
            "maxReplicas": 2,
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, version, strict=True)


# ------------------------------------------------------------------ they fit together


def test_kustomization_lists_every_base_file() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert "alternatives/hpa-worker.yaml" not in listed  # never both autoscalers


def test_services_select_pods_and_name_their_ports() -> None:
    workloads = [d for d in BASE if d["kind"] in WORKLOADS]
    for svc in (d for d in BASE if d["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        matches = [
            w
            for w in workloads
            if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)}"
        port_names = {p["name"] for c in _containers(matches[0]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_workload_selectors_match_their_templates() -> None:
    for w in (d for d in BASE if d["kind"] in WORKLOADS):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_reference_resolves() -> None:
    defined = {(d["kind"], d["metadata"]["name"]) for d in BASE}
    for w in (d for d in BASE if d["kind"] in WORKLOADS):
        pod = w["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in defined
        for vol in pod.get("volumes", []):
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in defined
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in defined
                if "secretRef" in src:
                    assert ("Secret", src["secretRef"]["name"]) in defined
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = _find("Secret", ref["name"])
                    assert ref["key"] in secret["stringData"]


def test_configmap_names_only_real_settings() -> None:
    config = _find("ConfigMap", "launchbay-config")["data"]
    secret = _find("Secret", "launchbay-secrets")["stringData"]
    fields = set(Settings.model_fields)
    for key in [*config, *(k for k in secret if k.startswith("LAUNCHBAY_"))]:
        assert key.startswith("LAUNCHBAY_") and key[10:].lower() in fields, key
    assert secret["LAUNCHBAY_DATABASE_URL"].startswith("postgresql+psycopg://")
    Settings(**{k[10:].lower(): v for k, v in config.items()})  # the values parse


def test_launchbay_services_share_one_image_and_run_their_role() -> None:
    images = set()
    for role, name in SERVICES.items():
        dep = _find("Deployment", name)
        (container,) = _containers(dep)
        images.add(container["image"])
        assert container["args"] == [role]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/var/lib/launchbay" in mounts, f"{role} misses the shared home"
    assert images == {"launchbay"}


def test_beat_runs_exactly_once() -> None:
    beat = _find("Deployment", "launchbay-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"


def test_every_container_is_unprivileged_with_limits() -> None:
    for w in (d for d in BASE if d["kind"] in WORKLOADS):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"])


def test_only_workers_may_touch_jobs_and_pods() -> None:
    role = _find("Role", "launchbay-worker")
    grants = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert {"create", "delete"} <= grants[("batch", "jobs")]
    assert "get" in grants[("", "pods/log")]
    assert {"get", "list", "watch"} <= grants[("", "pods")]
    assert all("*" not in verbs for verbs in grants.values())
    binding = _find("RoleBinding", "launchbay-worker")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "launchbay-worker",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "launchbay-worker"}]
    worker = _find("Deployment", "launchbay-worker")["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == "launchbay-worker"
    for name in ("launchbay-api", "launchbay-beat", "launchbay-flower"):
        pod = _find("Deployment", name)["spec"]["template"]["spec"]
        assert pod.get("serviceAccountName") != "launchbay-worker"
        assert pod.get("automountServiceAccountToken") is False


def _metric_trigger() -> tuple[dict[str, Any], dict[str, Any]]:
    so = _find("ScaledObject", "launchbay-worker")
    (trigger,) = so["spec"]["triggers"]
    return so, trigger


def test_autoscaler_reads_the_demand_of_the_worker_executors_from_the_api() -> None:
    """The ScaledObject asks the API Service for the jobs the workers' executors have
    waiting or running, per LAUNCHBAY_WORKER_CONCURRENCY slots, with the API's token."""
    config = _find("ConfigMap", "launchbay-config")["data"]
    so, trigger = _metric_trigger()
    assert so["spec"]["scaleTargetRef"]["name"] == "launchbay-worker"
    meta_ = trigger["metadata"]
    url = urlsplit(meta_["url"])
    host, _, namespace_part = url.hostname.partition(".")  # type: ignore[union-attr]
    api_svc = _find("Service", "launchbay-api")
    assert host == api_svc["metadata"]["name"]
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert namespace_part == f"{kust['namespace']}.svc.cluster.local"
    assert (url.port or 80) in {p["port"] for p in api_svc["spec"]["ports"]}
    assert url.path == "/api/v1/stats"
    executors = config["LAUNCHBAY_WORKER_EXECUTORS"].split(",")
    assert sorted(parse_qs(url.query)["executor"]) == sorted(executors)
    assert meta_["valueLocation"] == "demand"
    assert trigger.get("metricType", "AverageValue") == "AverageValue"
    assert meta_["targetValue"] == config["LAUNCHBAY_WORKER_CONCURRENCY"]
    # the token: bearer, from the Secret the API reads LAUNCHBAY_TOKEN from
    assert meta_["authMode"] == "bearer"
    auth = _find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "token"
    api_env = _containers(_find("Deployment", "launchbay-api"))[0]["envFrom"]
    assert {"secretRef": {"name": ref["name"]}} in api_env
    assert ref["key"] == "LAUNCHBAY_TOKEN"
    assert ref["key"] in _find("Secret", ref["name"])["stringData"]


def test_the_alternative_hpa_scales_on_the_same_demand() -> None:
    _, trigger = _metric_trigger()
    hpa = _find("HorizontalPodAutoscaler", "launchbay-worker", [d for _, d in DOCS])
    assert hpa["spec"]["scaleTargetRef"]["name"] == "launchbay-worker"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "launchbay_jobs_demand"
    assert metric["external"]["target"] == {
        "type": "AverageValue",
        "averageValue": trigger["metadata"]["targetValue"],
    }


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    c = memory_core(Settings(home=tmp_path))
    yield c
    c.close()


def _value_at(body: dict[str, Any], location: str) -> Any:
    """A plain dotted GJSON path (all the ScaledObject uses)."""
    value: Any = body
    for part in location.split("."):
        value = value[part]
    return value


def test_the_metric_counts_waiting_claimed_and_running_jobs_of_the_worker_executors(
    core: MemoryCore,
) -> None:
    """GET the ScaledObject's URL (path and query) from the API's real /stats route, on an
    in-memory store: running and claimed jobs count as well as queued ones; ended jobs and
    jobs of executors the workers do not run do not."""
    lc, store = core.lifecycle, core.store

    def job(executor: str) -> str:
        spec: dict[str, Any] = {"executor": executor}
        if executor == "builtin":
            spec.update(type="countdown", params={"seconds": 1})
        elif executor == "docker":
            spec.update(image="busybox:latest", steps=[{"name": "s", "command": ["true"]}])
        else:
            spec.update(command=["true"])
        return store.create(spec).id

    job("builtin")  # queued
    claimed = job("builtin")
    lc.claim(claimed, "runner-a")
    for _ in range(2):  # running: the busy slots an autoscaler on queue lengths misses
        running = job("process")
        lc.claim(running, "runner-a")
        lc.start(running, "runner-a", 1)
    ended = job("builtin")
    lc.claim(ended, "runner-a")
    lc.start(ended, "runner-a", 1)
    assert store.finish(ended, 1, JobStatus.succeeded) is not None
    job("docker")  # queued, but no worker pod here runs docker jobs

    app = FastAPI()
    app.include_router(meta.router, prefix="/api/v1")
    app.state.lb = SimpleNamespace(store=store, runners=core.runners)
    _, trigger = _metric_trigger()
    url = urlsplit(trigger["metadata"]["url"])

    async def get(*paths: str) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return [await client.get(path) for path in paths]

    asked, every, docker, unknown = asyncio.run(
        get(
            f"{url.path}?{url.query}",
            url.path,
            f"{url.path}?executor=docker",
            f"{url.path}?executor=nope",
        )
    )
    assert asked.status_code == 200, asked.text
    stats = asked.json()
    assert _value_at(stats, trigger["metadata"]["valueLocation"]) == 4
    assert (stats["queued"], stats["claimed"], stats["running"]) == (2, 1, 2)
    assert every.json()["demand"] == 5  # no executor named: every job
    assert docker.json()["demand"] == 1
    assert unknown.status_code == 422


# ------------------------------------------------------------------ graceful drain


def test_worker_pods_get_the_drain_and_the_stop_of_their_jobs_before_sigkill() -> None:
    """terminationGracePeriodSeconds covers LAUNCHBAY_DRAIN_S, then a job's stop grace and
    the hand-back: a pod killed sooner leaves its jobs to lease expiry (spending the loss
    budget) instead of handing them back."""
    config = _find("ConfigMap", "launchbay-config")["data"]
    assert "LAUNCHBAY_DRAIN_S" in config, "set the drain explicitly, next to the grace"
    drain_s = Settings(drain_s=config["LAUNCHBAY_DRAIN_S"]).drain_s
    pod = _find("Deployment", "launchbay-worker")["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= least_stop_grace_s(drain_s), (
        f"worker terminationGracePeriodSeconds {grace} < drain {drain_s} + job grace "
        f"{JOB_GRACE_S} + {HANDBACK_MARGIN_S}"
    )
    # no pod-level override of the drain that the check above would not see
    for c in pod["containers"]:
        assert all(e["name"] != "LAUNCHBAY_DRAIN_S" for e in c.get("env", []))
