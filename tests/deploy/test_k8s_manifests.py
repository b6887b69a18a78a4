"""deploy/k8s: every manifest validates against the Kubernetes schema, and they fit together.

Standard kinds are validated strictly (unknown fields are errors) with kubernetes-validate
against two schema versions it ships: 1.29 (the oldest we claim) and its newest. KEDA's
ScaledObject is a CRD the package cannot know, so it is checked against a JSON schema
written here from KEDA v2's CRD (the fields we use and their types), and its embedded
HPA behaviour is validated as part of a real HorizontalPodAutoscaler.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.routing import worker_queues
from orchestrator.settings import Settings

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
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string"},
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
# The keys KEDA's redis scaler (list length) reads.
REDIS_TRIGGER_KEYS = {
    "address",
    "host",
    "port",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    "username",
    "usernameFromEnv",
    "passwordFromEnv",
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
    ]:
        assert needed in kinds, needed
    assert ("HorizontalPodAutoscaler", "launchbay-worker") in {
        (d["kind"], d["metadata"]["name"]) for _, d in DOCS
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("item", [i for i in DOCS if i[1]["kind"] != "ScaledObject"], ids=_ids)
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


def test_scaled_object_matches_the_keda_schema() -> None:
    so = _find("ScaledObject", "launchbay-worker")
    jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
    for trigger in so["spec"]["triggers"]:
        assert trigger["type"] == "redis"
        assert set(trigger["metadata"]) <= REDIS_TRIGGER_KEYS, trigger["metadata"]
        assert "listName" in trigger["metadata"]
        assert int(trigger["metadata"]["listLength"]) > 0
    broken = copy.deepcopy(so)
    broken["spec"]["triggers"][0]["metadata"]["listLength"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT_SCHEMA)


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


def test_autoscalers_watch_exactly_the_worker_queues() -> None:
    config = _find("ConfigMap", "launchbay-config")["data"]
    executors = config["LAUNCHBAY_WORKER_EXECUTORS"].split(",")
    queues = set(worker_queues(executors, []))
    so = _find("ScaledObject", "launchbay-worker")
    assert so["spec"]["scaleTargetRef"]["name"] == "launchbay-worker"
    assert {t["metadata"]["listName"] for t in so["spec"]["triggers"]} == queues
    redis_host = {t["metadata"]["address"].split(".")[0] for t in so["spec"]["triggers"]}
    assert redis_host == {_find("Service", "redis")["metadata"]["name"]}
    assert config["LAUNCHBAY_REDIS_URL"].startswith("redis://redis:6379/")
    hpa = _find("HorizontalPodAutoscaler", "launchbay-worker", [d for _, d in DOCS])
    assert hpa["spec"]["scaleTargetRef"]["name"] == "launchbay-worker"
    (metric,) = hpa["spec"]["metrics"]
    (expr,) = metric["external"]["metric"]["selector"]["matchExpressions"]
    assert set(expr["values"]) == queues
