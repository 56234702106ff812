"""deploy/ rendered with kustomize and checked offline (manager.k8s).

Each overlay renders and the checker finds nothing in it; each thing broken on purpose in the
rendered manifests is found, with a message that says where, what and how to fix it (so the
clean result means something). The manifests also agree with the code they run: every
LASTMILE_* variable is a setting and parses, the gateway's flags parse, and the dashboard and
the autoscaler read metrics that Triton and the gateway really export.

Needs kustomize (`make test-deps` installs it): skipped without one, except on CI.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from manager.k8s import ExternalSecret, Finding, build, check, find_kustomize
from manager.k8s.render import (
    KustomizeNotFound,
    RenderError,
    pinned_kustomize,
    read_external_secrets,
)
from manager.k8s.selectors import ADAPTER_RULES_ANNOTATION

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = {"cpu-dev": DEPLOY / "overlays" / "cpu-dev", "gpu": DEPLOY / "overlays" / "gpu"}
Manifests = list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered(kustomize: list[str]) -> dict[str, Manifests]:
    return {name: build(folder, command=kustomize) for name, folder in OVERLAYS.items()}


def external(overlay: str) -> list[ExternalSecret]:
    return read_external_secrets(OVERLAYS[overlay])


def get(manifests: Manifests, kind: str, name: str) -> dict[str, Any]:
    for m in manifests:
        if m["kind"] == kind and m["metadata"]["name"] == name:
            return m
    raise AssertionError(f"no {kind} {name} in the rendered manifests")


def pod_spec(manifests: Manifests, kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = get(manifests, kind, name)["spec"]["template"]["spec"]
    return spec


def container(manifests: Manifests, kind: str, name: str, container_name: str) -> dict[str, Any]:
    c: dict[str, Any]
    for c in pod_spec(manifests, kind, name)["containers"]:
        if c["name"] == container_name:
            return c  # the object itself: the breakage tests change it in place
    raise AssertionError(f"{kind} {name} has no container {container_name}")


# --- the overlays render, and are clean ---------------------------------------------------


COMMON = {
    ("Namespace", "lastmile"),
    ("StatefulSet", "triton"),
    ("Service", "triton-headless"),
    ("Service", "triton"),
    ("PodDisruptionBudget", "triton"),
    ("Deployment", "lastmile-manager"),
    ("Service", "lastmile-manager"),
    ("PersistentVolumeClaim", "lastmile-manager-home"),
    ("Deployment", "lastmile-gateway"),
    ("Service", "lastmile-gateway"),
    ("HorizontalPodAutoscaler", "lastmile-gateway"),
    ("PodDisruptionBudget", "lastmile-gateway"),
    ("NetworkPolicy", "default-deny-ingress"),
    ("NetworkPolicy", "triton"),
    ("NetworkPolicy", "lastmile-manager"),
    ("NetworkPolicy", "lastmile-gateway"),
    ("ConfigMap", "lastmile-grafana-dashboard"),
}
ONLY = {
    "cpu-dev": {
        ("StatefulSet", "postgres"),
        ("Service", "postgres"),
        ("NetworkPolicy", "postgres"),
    },
    "gpu": {
        ("ServiceMonitor", "triton"),
        ("ServiceMonitor", "lastmile-gateway"),
        ("HorizontalPodAutoscaler", "triton"),
        ("ConfigMap", "lastmile-prometheus-adapter-rules"),
    },
}


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_each_overlay_renders_the_whole_system(
    rendered: dict[str, Manifests], overlay: str
) -> None:
    manifests = rendered[overlay]
    have = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    other = "gpu" if overlay == "cpu-dev" else "cpu-dev"
    assert COMMON | ONLY[overlay] <= have
    assert not (ONLY[other] & have)
    secrets = [m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"]
    # cpu-dev generates an example Secret; gpu leaves lastmile-secrets to the operator
    assert [s.startswith("lastmile-secrets-") for s in secrets] == (
        [True] if overlay == "cpu-dev" else []
    )
    for m in manifests:
        if m["kind"] != "Namespace":
            assert m["metadata"].get("namespace") == "lastmile", m["metadata"]["name"]


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_the_checker_finds_nothing_wrong_in(rendered: dict[str, Manifests], overlay: str) -> None:
    findings = check(rendered[overlay], external_secrets=external(overlay))
    assert findings == [], "\n".join(map(str, findings))


def test_only_the_gpu_overlay_puts_triton_on_a_gpu(rendered: dict[str, Manifests]) -> None:
    gpu = pod_spec(rendered["gpu"], "StatefulSet", "triton")
    (triton,) = gpu["containers"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    shm = {v["name"]: v for v in gpu["volumes"]}["dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in triton["volumeMounts"]
    dev = pod_spec(rendered["cpu-dev"], "StatefulSet", "triton")
    assert "nvidia.com/gpu" not in dev["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in dev
    assert get(rendered["cpu-dev"], "StatefulSet", "triton")["spec"]["replicas"] == 1


# --- the checker finds what is broken ------------------------------------------------------


def _image_latest(ms: Manifests) -> None:
    container(ms, "Deployment", "lastmile-gateway", "gateway")["image"] = (
        "ghcr.io/x/lastmile:latest"
    )


def _image_untagged(ms: Manifests) -> None:
    container(ms, "StatefulSet", "triton", "tritonserver")["image"] = "nvcr.io/nvidia/tritonserver"


def _no_memory_limit(ms: Manifests) -> None:
    del container(ms, "StatefulSet", "triton", "tritonserver")["resources"]["limits"]["memory"]


def _service_selects_nothing(ms: Manifests) -> None:
    get(ms, "Service", "lastmile-manager")["spec"]["selector"]["app.kubernetes.io/name"] = "managr"


def _hpa_to_missing_deployment(ms: Manifests) -> None:
    get(ms, "HorizontalPodAutoscaler", "lastmile-gateway")["spec"]["scaleTargetRef"]["name"] = (
        "lastmile-gatewy"
    )


def _secret_missing(ms: Manifests) -> None:
    ms[:] = [m for m in ms if m["kind"] != "Secret"]


def _secret_key_missing(ms: Manifests) -> None:
    env = container(ms, "Deployment", "lastmile-manager", "manager")["env"]
    for var in env:
        if var["name"] == "LASTMILE_DATABASE_URL":
            var["valueFrom"]["secretKeyRef"]["key"] = "database_url"


def _run_as_root(ms: Manifests) -> None:
    container(ms, "Deployment", "lastmile-manager", "manager")["securityContext"]["runAsUser"] = 0


def _privilege_escalation(ms: Manifests) -> None:
    sc = container(ms, "Deployment", "lastmile-gateway", "gateway")["securityContext"]
    del sc["allowPrivilegeEscalation"]


def _unknown_field(ms: Manifests) -> None:
    spec = get(ms, "Deployment", "lastmile-gateway")["spec"]
    spec["replica"] = spec.pop("replicas")


def _network_policy_selects_nothing(ms: Manifests) -> None:
    selector = get(ms, "NetworkPolicy", "triton")["spec"]["podSelector"]["matchLabels"]
    selector["app.kubernetes.io/name"] = "tritonserver"


def _network_policy_peer_selects_nothing(ms: Manifests) -> None:
    peer = get(ms, "NetworkPolicy", "triton")["spec"]["ingress"][0]["from"][0]
    peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] = "gw"


def _probe_port_unnamed(ms: Manifests) -> None:
    probe = container(ms, "Deployment", "lastmile-gateway", "gateway")["readinessProbe"]
    probe["httpGet"]["port"] = "https"


def _service_port_unnamed(ms: Manifests) -> None:
    get(ms, "Service", "triton")["spec"]["ports"][1]["targetPort"] = "grpcs"


def _pdb_selects_nothing(ms: Manifests) -> None:
    get(ms, "PodDisruptionBudget", "lastmile-gateway")["spec"]["selector"]["matchLabels"] = {
        "app": "gateway"
    }


def _no_liveness_probe(ms: Manifests) -> None:
    del container(ms, "Deployment", "lastmile-manager", "manager")["livenessProbe"]


def _service_account_missing(ms: Manifests) -> None:
    ms[:] = [
        m
        for m in ms
        if (m["kind"], m["metadata"]["name"]) != ("ServiceAccount", "lastmile-gateway")
    ]


def _volume_missing(ms: Manifests) -> None:
    pod_spec(ms, "StatefulSet", "triton")["volumes"] = [
        v for v in pod_spec(ms, "StatefulSet", "triton")["volumes"] if v["name"] != "tmp"
    ]


def _label_missing(ms: Manifests) -> None:
    del get(ms, "Service", "triton")["metadata"]["labels"]["app.kubernetes.io/part-of"]


def _statefulset_service_missing(ms: Manifests) -> None:
    get(ms, "StatefulSet", "triton")["spec"]["serviceName"] = "triton-hl"


def _triton_replicas_unlisted(ms: Manifests) -> None:
    get(ms, "StatefulSet", "triton")["spec"]["replicas"] = 9  # the range lists triton-{0..7}


def _triton_hpa_beyond_list(ms: Manifests) -> None:
    get(ms, "HorizontalPodAutoscaler", "triton")["spec"]["maxReplicas"] = 12


def _triton_hpa_to_zero(ms: Manifests) -> None:
    get(ms, "HorizontalPodAutoscaler", "triton")["spec"]["minReplicas"] = 0


def _triton_hpa_unknown_metric(ms: Manifests) -> None:
    metric = get(ms, "HorizontalPodAutoscaler", "triton")["spec"]["metrics"][1]
    metric["pods"]["metric"]["name"] = "triton_queue_size"


def _triton_token_elsewhere(ms: Manifests) -> None:
    env = container(ms, "StatefulSet", "triton", "tritonserver")["env"]
    env[0]["valueFrom"]["secretKeyRef"]["key"] = "gateway-token"


def _triton_header_renamed(ms: Manifests) -> None:
    c = container(ms, "StatefulSet", "triton", "tritonserver")
    c["args"] = [a.replace(":lastmile-control=", ":x-control=") for a in c["args"]]


def _gateway_upstream_missing(ms: Manifests) -> None:
    args = container(ms, "Deployment", "lastmile-gateway", "gateway")["args"]
    args.remove("--allowed-upstream=triton-{0..7}.triton-headless:8001")
    args.append("--allowed-upstream=triton-{0..6}.triton-headless:8001")


def _gateway_metrics_not_headless(ms: Manifests) -> None:
    del get(ms, "Service", "lastmile-gateway-headless")["spec"]["clusterIP"]


def _routes_url_elsewhere(ms: Manifests) -> None:
    c = container(ms, "Deployment", "lastmile-gateway", "gateway")
    c["args"] = [a.replace("lastmile-manager:8080", "lastmile-manager:8081") for a in c["args"]]


def _gateway_tmp_unmounted(ms: Manifests) -> None:
    c = container(ms, "Deployment", "lastmile-gateway", "gateway")
    c["volumeMounts"] = [m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"]


def _gateway_tmpdir_read_only(ms: Manifests) -> None:
    c = container(ms, "Deployment", "lastmile-gateway", "gateway")
    c["env"] = [{"name": "TMPDIR", "value": "/var/run/lastmile/scratch"}]  # the token's mount


def _gateway_workers_past_the_cpu_limit(ms: Manifests) -> None:
    c = container(ms, "Deployment", "lastmile-gateway", "gateway")
    c["args"] = [a for a in c["args"] if not a.startswith("--workers")] + ["--workers", "8"]
    c["resources"]["limits"]["cpu"] = "1500m"


def _service_monitor_unknown_field(ms: Manifests) -> None:
    endpoint = get(ms, "ServiceMonitor", "triton")["spec"]["endpoints"][0]
    endpoint["intervall"] = endpoint.pop("interval")


def _service_monitor_port_unknown(ms: Manifests) -> None:
    get(ms, "ServiceMonitor", "lastmile-gateway")["spec"]["endpoints"][0]["port"] = "prometheus"


def _unknown_custom_resource(ms: Manifests) -> None:
    ms.append(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PodMonitor",
            "metadata": {"name": "triton", "namespace": "lastmile"},
            "spec": {},
        }
    )


# id: (overlay, how to break it, kind, name, check, words the problem must contain)
BREAKAGES: dict[str, tuple[str, Callable[[Manifests], None], str, str, str, str]] = {
    "image :latest": (
        "gpu", _image_latest, "Deployment", "lastmile-gateway", "image-pinned",
        "'ghcr.io/x/lastmile:latest', which is not pinned",
    ),
    "image without a tag": (
        "cpu-dev", _image_untagged, "StatefulSet", "triton", "image-pinned",
        "'nvcr.io/nvidia/tritonserver', which is not pinned",
    ),
    "a limit removed": (
        "gpu", _no_memory_limit, "StatefulSet", "triton", "resources",
        "container 'tritonserver' has no resources.limits.memory",
    ),
    "a Service selecting nothing": (
        "cpu-dev", _service_selects_nothing, "Service", "lastmile-manager", "service-selector",
        "app.kubernetes.io/name=managr",
    ),
    "an HPA to a missing Deployment": (
        "gpu", _hpa_to_missing_deployment, "HorizontalPodAutoscaler", "lastmile-gateway",
        "hpa-target", "Deployment 'lastmile-gatewy', which no manifest defines",
    ),
    "a missing Secret": (
        "cpu-dev", _secret_missing, "Deployment", "lastmile-manager", "secret-ref",
        "env LASTMILE_DATABASE_URL reads Secret 'lastmile-secrets-",
    ),
    "a missing key of an external Secret": (
        "gpu", _secret_key_missing, "Deployment", "lastmile-manager", "secret-ref",
        "reads key(s) database_url of Secret 'lastmile-secrets', whose declared",
    ),
    "runAsUser 0": (
        "gpu", _run_as_root, "Deployment", "lastmile-manager", "security-context",
        "container 'manager' runs as root (runAsUser 0)",
    ),
    "privilege escalation allowed": (
        "cpu-dev", _privilege_escalation, "Deployment", "lastmile-gateway", "security-context",
        "may escalate privileges",
    ),
    "unknown field spec.replica": (
        "gpu", _unknown_field, "Deployment", "lastmile-gateway", "schema",
        "spec: Additional properties are not allowed ('replica' was unexpected)",
    ),
    "a NetworkPolicy selecting nothing": (
        "gpu", _network_policy_selects_nothing, "NetworkPolicy", "triton",
        "networkpolicy-selector", "app.kubernetes.io/name=tritonserver",
    ),
    "a NetworkPolicy peer selecting nothing": (
        "cpu-dev", _network_policy_peer_selects_nothing, "NetworkPolicy", "triton",
        "networkpolicy-selector", "ingress[0].from podSelector",
    ),
    "a probe on an unnamed port": (
        "gpu", _probe_port_unnamed, "Deployment", "lastmile-gateway", "probe-port",
        "readinessProbe uses port 'https'",
    ),
    "a Service to an unnamed port": (
        "gpu", _service_port_unnamed, "Service", "triton", "service-port",
        "container port named 'grpcs'",
    ),
    "a PDB selecting nothing": (
        "cpu-dev", _pdb_selects_nothing, "PodDisruptionBudget", "lastmile-gateway",
        "pdb-selector", "app=gateway",
    ),
    "no liveness probe": (
        "gpu", _no_liveness_probe, "Deployment", "lastmile-manager", "probes",
        "no livenessProbe",
    ),
    "a missing ServiceAccount": (
        "cpu-dev", _service_account_missing, "Deployment", "lastmile-gateway",
        "serviceaccount-ref", "ServiceAccount 'lastmile-gateway', which no manifest defines",
    ),
    "a mount of a missing volume": (
        "gpu", _volume_missing, "StatefulSet", "triton", "volume-mount",
        "mounts volume 'tmp' at /tmp",
    ),
    "a label missing": (
        "gpu", _label_missing, "Service", "triton", "labels", "app.kubernetes.io/part-of",
    ),
    "a StatefulSet without its Service": (
        "cpu-dev", _statefulset_service_missing, "StatefulSet", "triton", "statefulset-service",
        "'triton-hl', which no manifest defines",
    ),
    "Triton pods the manager does not list": (
        "gpu", _triton_replicas_unlisted, "Deployment", "lastmile-manager", "triton-servers",
        "StatefulSet 'triton', which may have 9 pod(s)",
    ),
    "a Triton HPA beyond the manager's list": (
        "gpu", _triton_hpa_beyond_list, "Deployment", "lastmile-manager", "triton-servers",
        "StatefulSet 'triton', which may have 12 pod(s)",
    ),
    "a Triton HPA down to no pod": (
        "gpu", _triton_hpa_to_zero, "HorizontalPodAutoscaler", "triton", "triton-servers",
        "down to 0 pods",
    ),
    "an HPA on a metric no adapter rule exposes": (
        "gpu", _triton_hpa_unknown_metric, "HorizontalPodAutoscaler", "triton", "hpa-metric",
        "custom metric 'triton_queue_size'",
    ),
    "Triton's control token from another Secret key": (
        "gpu", _triton_token_elsewhere, "StatefulSet", "triton", "triton-control",
        "takes the token from Secret 'lastmile-secrets' key 'gateway-token', the manager from "
        "Secret 'lastmile-secrets' key 'triton-control-token'",
    ),
    "Triton expecting another control header": (
        "cpu-dev", _triton_header_renamed, "StatefulSet", "triton", "triton-control",
        "--grpc-restricted-protocol: requires header 'x-control', the manager sends",
    ),
    "a Triton the gateway may not route to": (
        "gpu", _gateway_upstream_missing, "Deployment", "lastmile-gateway", "gateway-upstreams",
        "routes to triton-7.triton-headless:8001",
    ),
    "gateway metrics read through a Service that is not headless": (
        "gpu", _gateway_metrics_not_headless, "Deployment", "lastmile-manager", "gateway-metrics",
        "'lastmile-gateway-headless', which is not headless",
    ),
    "a gateway pulling routes from no Service": (
        "cpu-dev", _routes_url_elsewhere, "Deployment", "lastmile-gateway", "gateway-routes-url",
        "--routes-url http://lastmile-manager:8081/api/v1/gateway/routes names no Service port",
    ),
    "a gateway sending captures to no Service": (
        "cpu-dev", _routes_url_elsewhere, "Deployment", "lastmile-gateway", "gateway-routes-url",
        "--capture-url http://lastmile-manager:8081/api/v1/gateway/capture names no Service port",
    ),
    "gateway processes without a writable temporary folder": (
        "gpu", _gateway_tmp_unmounted, "Deployment", "lastmile-gateway",
        "gateway-workers-tmpdir", "temporary folder /tmp is on no writable volume",
    ),
    "gateway processes with TMPDIR on a read-only mount": (
        "cpu-dev", _gateway_tmpdir_read_only, "Deployment", "lastmile-gateway",
        "gateway-workers-tmpdir", "temporary folder /var/run/lastmile/scratch is on no writable",
    ),
    "more gateway processes than the CPU limit has cores": (
        "cpu-dev", _gateway_workers_past_the_cpu_limit, "Deployment", "lastmile-gateway",
        "gateway-workers-cpu", "runs 8 processes (--workers) under a CPU limit of 1.5 cores",
    ),
    "a typo in a ServiceMonitor": (
        "gpu", _service_monitor_unknown_field, "ServiceMonitor", "triton", "crd-schema",
        "spec.endpoints[0].intervall: unknown field 'intervall'",
    ),
    "a ServiceMonitor on a port no Service names": (
        "gpu", _service_monitor_port_unknown, "ServiceMonitor", "lastmile-gateway",
        "servicemonitor-port", "port 'prometheus'",
    ),
    "a custom resource without a schema": (
        "gpu", _unknown_custom_resource, "PodMonitor", "triton", "unknown-kind",
        "no schema for PodMonitor (monitoring.coreos.com/v1)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_the_checker_finds(rendered: dict[str, Manifests], breakage: str) -> None:
    overlay, breaks, kind, name, check_id, words = BREAKAGES[breakage]
    manifests = copy.deepcopy(rendered[overlay])
    breaks(manifests)
    findings = check(manifests, external_secrets=external(overlay))
    hits = [
        f for f in findings
        if (f.check, f.kind, f.name, f.namespace) == (check_id, kind, name, "lastmile")
        and words in f.problem
    ]  # fmt: skip
    assert hits, f"no {check_id} finding on {kind} {name} saying {words!r} in:\n" + "\n".join(
        map(str, findings)
    )
    assert all(len(f.fix) > 10 for f in hits)
    assert str(hits[0]).startswith(f"{kind} lastmile/{name} [{check_id}]: ")


def test_a_plain_name_declares_an_external_secret_with_any_key(
    rendered: dict[str, Manifests],
) -> None:
    manifests = copy.deepcopy(rendered["gpu"])
    _secret_key_missing(manifests)
    assert check(manifests, external_secrets=["lastmile-secrets"]) == []
    missing = check(manifests)
    assert {f.check for f in missing} == {"secret-ref"}
    assert "or declares external" in missing[0].problem


# --- the manifests agree with the code they run --------------------------------------------


def _env_values(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet makes it: values from Secrets replaced by
    stand-ins, $(VAR) references expanded."""
    stand_ins = {"database-url": "postgresql+psycopg://lastmile:x@postgres:5432/lastmile"}
    env: dict[str, str] = {}
    for var in c.get("env") or []:
        if "valueFrom" in var:
            key = var["valueFrom"].get("secretKeyRef", {}).get("key", "")
            env[var["name"]] = stand_ins.get(key, f"stand-in-{key}")
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), var["value"])
    return env


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_every_lastmile_variable_is_a_setting_that_parses(
    rendered: dict[str, Manifests], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manager.settings import Settings
    from manager.system import gateway_pool_of, make_runtime

    env = _env_values(container(rendered[overlay], "Deployment", "lastmile-manager", "manager"))
    named = [name for name in env if name.startswith("LASTMILE_")]
    unknown = [n for n in named if n.removeprefix("LASTMILE_").lower() not in Settings.model_fields]
    assert not unknown, f"not fields of manager.settings.Settings: {unknown}"
    for name in [n for n in os.environ if n.startswith("LASTMILE_")]:
        monkeypatch.delenv(name)
    for name in named:
        monkeypatch.setenv(name, env[name])
    settings = Settings()
    assert settings.profile == "gpu"
    assert settings.api_bind_host == "0.0.0.0"
    assert "lastmile-manager" in settings.api_allowed_hosts
    assert settings.triton_control_protocol == "grpc"
    fleet = make_runtime(settings)  # parses the Triton list and the control header, no I/O
    gateway_pool_of(settings)  # and the gateways whose figures count too
    assert settings.gateway_metrics_urls == "dns+http://lastmile-gateway-headless:8002/metrics"
    expected = _most_triton_pods(rendered[overlay])  # every pod the HPA may run
    assert expected == (8 if overlay == "gpu" else 1)
    assert [r.endpoints.http_url for r in fleet.replicas] == [
        f"http://triton-{i}.triton-headless:8000" for i in range(expected)
    ]
    assert fleet.replicas[0].control_headers == {
        "lastmile-control": "stand-in-triton-control-token"
    }


def _most_triton_pods(ms: Manifests) -> int:
    """The Triton StatefulSet's replicas, or its HPA's maxReplicas where one scales it."""
    replicas = int(get(ms, "StatefulSet", "triton")["spec"]["replicas"])
    hpas = [
        m
        for m in ms
        if m["kind"] == "HorizontalPodAutoscaler" and m["metadata"]["name"] == "triton"
    ]
    return max([replicas, *(int(h["spec"]["maxReplicas"]) for h in hpas)])


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_the_gateway_flags_parse(
    rendered: dict[str, Manifests], overlay: str, tmp_path: Path
) -> None:
    from rollout import gateway

    c = container(rendered[overlay], "Deployment", "lastmile-gateway", "gateway")
    assert c["command"] == ["python", "-m", "rollout.gateway"]
    token = tmp_path / "gateway-token"
    token.write_text("stand-in-gateway-token\n")
    args = [re.sub(r"=/var/run/lastmile/gateway-token$", f"={token}", a) for a in c["args"]]
    config = gateway.parse_args(args)
    assert (config.host, config.http_port, config.grpc_port, config.metrics_port) == (
        "0.0.0.0", 8000, 8001, 8002
    )  # fmt: skip
    assert config.admin_token == "stand-in-gateway-token"
    assert config.routes_token == "stand-in-gateway-token"
    assert config.routes_url == "http://lastmile-manager:8080/api/v1/gateway/routes"
    # captured calls wait in the pod's emptyDir, then go to the manager's summariser
    assert config.capture_dir == "/var/lib/lastmile/capture"
    assert config.capture_url == "http://lastmile-manager:8080/api/v1/gateway/capture"
    mounts = container(rendered[overlay], "Deployment", "lastmile-gateway", "gateway")[
        "volumeMounts"
    ]
    assert config.capture_dir in {m["mountPath"] for m in mounts}
    # one gateway process per core of the pod's CPU limit, sharing a file in the pod's /tmp
    assert str(config.workers) == c["resources"]["limits"]["cpu"] == "2"
    assert {"name": "tmp", "mountPath": "/tmp"} in mounts
    pods = _most_triton_pods(rendered[overlay])
    assert config.allowed_upstreams == {
        (f"triton-{i}.triton-headless", port) for i in range(pods) for port in (8000, 8001)
    }


def _gateway_metric_names() -> set[str]:
    """Every sample name the gateway's /metrics shows once it has served a little."""
    from prometheus_client import generate_latest

    from rollout.gateway_metrics import GatewayStats, GaugeSource, make_registry

    stats = GatewayStats()
    stats.observe("default/fraud", "fraud/1", "http", 200, 0.01)
    stats.observe("default/fraud", "fraud/1", "http", 503, 0.01)
    stats.enter("default/fraud", "fraud/1")
    stats.shadow("default/fraud", "fraud/2", "ok", 0.02)
    gauges = GaugeSource(
        generation=lambda: 1,
        client_connections=lambda: 1,
        upstream_connections=lambda: {"triton-0.triton-headless:8000": 1},
        upstream_up=lambda: {"triton-0.triton-headless:8000": True},
        grpc_paths=lambda: {"fast": 1},
        capture=lambda: ({"default/fraud": 1}, {"default/fraud": 0}),
    )
    text = generate_latest(make_registry(stats, gauges)).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def _metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\b(?:nv|lastmile_gateway)_[a-z_]+\b", promql))


def test_dashboard_and_autoscaling_read_metrics_that_exist(
    rendered: dict[str, Manifests],
) -> None:
    from manager.observe.triton import GAUGES, MODEL_COUNTERS

    dashboard = json.loads((DEPLOY / "grafana" / "lastmile.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    used = set().union(*map(_metric_names, exprs))
    triton = {n for n in used if n.startswith("nv_")}
    assert triton <= MODEL_COUNTERS | set(GAUGES)
    assert {
        "nv_inference_request_success", "nv_inference_request_failure",
        "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
        "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_inference_pending_request_count",
    } <= triton  # fmt: skip
    gateway = used - triton
    assert gateway, "the dashboard shows no gateway figure"
    assert gateway <= _gateway_metric_names()

    for overlay, manifests in rendered.items():
        shipped = get(manifests, "ConfigMap", "lastmile-grafana-dashboard")
        assert shipped["metadata"]["labels"]["grafana_dashboard"] == "1", overlay
        assert json.loads(shipped["data"]["lastmile.json"]) == dashboard

    rules_map = get(rendered["gpu"], "ConfigMap", "lastmile-prometheus-adapter-rules")
    key = rules_map["metadata"]["annotations"][ADAPTER_RULES_ANNOTATION]
    rules = yaml.safe_load(rules_map["data"][key])["rules"]
    assert {r["name"]["as"] for r in rules} == {
        "triton_queue_duration_us_per_request",
        "triton_pending_requests",
    }
    read = set().union(*(_metric_names(r["seriesQuery"] + r["metricsQuery"]) for r in rules))
    assert read == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "nv_inference_pending_request_count",
    }


def test_every_promql_query_parses(rendered: dict[str, Manifests], tmp_path: Path) -> None:
    """The dashboard's and the adapter rules' queries, through Prometheus' own parser."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs prometheus (with promtool): `make test-deps`")
        pytest.skip("promtool (Debian package prometheus) is not installed: make test-deps")
    dashboard = json.loads((DEPLOY / "grafana" / "lastmile.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    queries = [
        q.replace("$__rate_interval", "1m").replace("$namespace", "lastmile") for q in queries
    ]
    rules_map = get(rendered["gpu"], "ConfigMap", "lastmile-prometheus-adapter-rules")
    for rule in yaml.safe_load(rules_map["data"]["config.yaml"])["rules"]:
        for query in (rule["seriesQuery"], rule["metricsQuery"]):
            queries.append(
                query.replace("<<.LabelMatchers>>", 'namespace="lastmile",pod="triton-0"').replace(
                    "<<.GroupBy>>", "pod"
                )
            )
    rules = {
        "groups": [
            {
                "name": "lastmile-queries",
                "rules": [
                    {"record": f"lastmile:query_{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- rendering: which kustomize, and what it says when it cannot ---------------------------


def test_lastmile_kustomize_must_name_an_executable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LASTMILE_KUSTOMIZE", str(tmp_path / "kustomize"))
    with pytest.raises(KustomizeNotFound, match="is not an executable file"):
        find_kustomize()


def test_kustomize_is_found_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """LASTMILE_KUSTOMIZE, then the pinned one under .tools/, then PATH's kustomize, then
    `kubectl kustomize` (which takes the folder without `build`)."""
    monkeypatch.delenv("LASTMILE_KUSTOMIZE", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))

    def executable(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
        return path

    root = tmp_path / "repo"
    with pytest.raises(KustomizeNotFound, match="make test-deps"):
        find_kustomize(root)
    kubectl = executable(bin_dir / "kubectl")
    assert find_kustomize(root) == [str(kubectl), "kustomize"]
    on_path = executable(bin_dir / "kustomize")
    assert find_kustomize(root) == [str(on_path), "build"]
    pinned = executable(pinned_kustomize(root))
    assert find_kustomize(root) == [str(pinned), "build"]
    monkeypatch.setenv("LASTMILE_KUSTOMIZE", "kubectl")
    assert find_kustomize(root) == [str(kubectl), "kustomize"]


def test_a_broken_kustomization_says_what_kustomize_said(
    kustomize: list[str], tmp_path: Path
) -> None:
    with pytest.raises(RenderError, match=r"has no kustomization\.yaml"):
        build(tmp_path, command=kustomize)
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(RenderError, match=r"failed: .*missing\.yaml"):
        build(tmp_path, command=kustomize)


def test_external_secrets_list_names_and_keys(tmp_path: Path) -> None:
    (tmp_path / "external-secrets.txt").write_text(
        "# operator's\nlastmile-secrets: database-url gateway-token  # the two\nother:\n"
    )
    assert read_external_secrets(tmp_path) == [
        ExternalSecret("lastmile-secrets", frozenset({"database-url", "gateway-token"})),
        ExternalSecret("other", None),
    ]
    (tmp_path / "external-secrets.txt").write_text("lastmile-secrets database-url\n")
    with pytest.raises(RenderError, match=r"external-secrets.txt:1: expected `NAME: KEY KEY"):
        read_external_secrets(tmp_path)
    assert read_external_secrets(tmp_path / "none") == []


def test_findings_read_as_one_line() -> None:
    f = Finding("probes", "Deployment", "api", "lastmile", "container 'api' has none", "add one")
    assert str(f) == "Deployment lastmile/api [probes]: container 'api' has none. Fix: add one"
