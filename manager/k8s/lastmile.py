"""What only Lastmile's own manifests must agree on, and Kubernetes cannot see:

- every Triton server the manager lists in LASTMILE_TRITON_URL (ranges such as
  ``triton-{0..7}`` expanded) is a pod of a StatefulSet, named through its headless Service,
  and every pod that StatefulSet may have — its replicas, or its HPA's maxReplicas — is listed
  (a pod the manager does not know serves no model; a listed pod that does not exist is a
  server that is down until it answers); an HPA on it keeps at least one pod;
- those Triton pods restrict their repository API (HTTP and gRPC) to the header the manager
  sends (LASTMILE_TRITON_CONTROL_HEADER), its value read from the same Secret key on both
  sides, or every load is refused (or the API is open);
- each gateway's --allowed-upstream flags allow every listed server's HTTP and gRPC address
  (the gateway refuses a routing table naming any other), and its --routes-url and
  --capture-url name a Service port of these manifests;
- a ``dns+`` entry of the manager's LASTMILE_GATEWAY_METRICS_URLS names a headless Service
  with that port in front of gateway pods (so that every gateway's traffic counts in gates);
- a gateway run as several processes (--workers N) has a writable temporary folder (its
  processes share their configuration through a file there; a read-only root filesystem
  needs an emptyDir at TMPDIR or /tmp), and no more processes than its CPU limit has cores
  (each process keeps at most one core busy; past the limit they only take turns).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from manager.k8s.objects import (
    Finding,
    Manifest,
    PodTemplate,
    finding,
    name_of,
    namespace_of,
    pod_templates,
    selects_map,
)
from rollout.addresses import expand_ordinals

GATEWAY_MODULE = "rollout.gateway"


@dataclass(frozen=True)
class Server:
    """One entry of LASTMILE_TRITON_URL: host, HTTP port, gRPC address."""

    host: str
    port: int
    grpc: str


def check_lastmile(manifests: list[Manifest]) -> list[Finding]:
    findings: list[Finding] = []
    pods = pod_templates(manifests)
    for pod in pods:
        for container, _init in pod.containers(init=False):
            env = _env(container)
            if "LASTMILE_TRITON_URL" in env:
                findings += _triton_servers(pod, container, manifests)
            if env.get("LASTMILE_GATEWAY_METRICS_URLS"):
                findings += _gateway_metrics(
                    pod, env["LASTMILE_GATEWAY_METRICS_URLS"], pods, manifests
                )
            if _runs_gateway(container):
                findings += _gateway(pod, container, manifests, pods)
    return findings


def _runs_gateway(container: Mapping[str, Any]) -> bool:
    return GATEWAY_MODULE in [*container.get("command", []), *container.get("args", [])]


def _gateway_metrics(
    pod: PodTemplate, listed: str, pods: list[PodTemplate], manifests: list[Manifest]
) -> list[Finding]:
    """Each ``dns+http://NAME:PORT/...`` entry names a headless Service of this namespace with
    that port, in front of gateway pods (the manager reads every pod's figures through it)."""
    findings = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry.startswith("dns+"):
            continue
        parts = urlsplit(entry.removeprefix("dns+"))
        labels = (parts.hostname or "").split(".")
        name = labels[0]
        service = next(
            (
                m for m in manifests
                if m.get("kind") == "Service" and name_of(m) == name
                and namespace_of(m) == pod.namespace
            ),
            None,
        )  # fmt: skip
        spec = (service or {}).get("spec") or {}
        gateways = [
            p for p in pods
            if p.namespace == pod.namespace and selects_map(spec.get("selector") or {}, p.labels)
            and any(_runs_gateway(c) for c, _init in p.containers(init=False))
        ]  # fmt: skip
        problem = None
        if service is None:
            problem = f"names Service {name!r}, which no manifest of this namespace defines"
        elif spec.get("clusterIP") != "None":
            problem = f"names Service {name!r}, which is not headless: it resolves to one address"
        elif parts.port not in {p.get("port") for p in spec.get("ports") or []}:
            problem = f"names port {parts.port} of Service {name!r}, which has no such port"
        elif not gateways or not spec.get("selector"):
            problem = f"names Service {name!r}, which selects no gateway pod"
        if problem:
            findings.append(
                finding(
                    "gateway-metrics",
                    pod.owner,
                    f"LASTMILE_GATEWAY_METRICS_URLS entry {entry!r} {problem}",
                    "point it at a headless Service (clusterIP: None) that selects the gateway "
                    "pods and exposes their metrics port",
                )
            )
    return findings


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "name" in e}


def servers(env: Mapping[str, str]) -> list[Server]:
    """The Triton servers the manager's environment lists (as manager.system reads them)."""
    urls = _listed(env.get("LASTMILE_TRITON_URL", ""))
    grpcs = _listed(env.get("LASTMILE_TRITON_GRPC_URL", ""))
    result = []
    for i, url in enumerate(urls):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        host, port = parts.hostname or "", parts.port or 0
        grpc = grpcs[i].removeprefix("grpc://") if i < len(grpcs) else f"{host}:{port + 1}"
        result.append(Server(host=host, port=port, grpc=grpc))
    return result


def _listed(text: str) -> list[str]:
    """A comma-separated server list, ranges (``triton-{0..7}``) expanded; a malformed range
    is kept as written (it then names no pod, which is reported)."""
    out: list[str] = []
    for entry in (e.strip() for e in text.split(",")):
        if entry:
            try:
                out += expand_ordinals(entry)
            except ValueError:
                out.append(entry)
    return out


def _capacity(sts: Manifest, manifests: list[Manifest]) -> int:
    """The most pods a StatefulSet may have: its replicas, or an HPA's maxReplicas above."""
    most = int((sts.get("spec") or {}).get("replicas", 1))
    for hpa in _hpas_of(sts, manifests):
        most = max(most, int((hpa.get("spec") or {}).get("maxReplicas") or 0))
    return most


def _hpas_of(sts: Manifest, manifests: list[Manifest]) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m.get("kind") == "HorizontalPodAutoscaler"
        and namespace_of(m) == namespace_of(sts)
        and ((m.get("spec") or {}).get("scaleTargetRef") or {}).get("kind") == "StatefulSet"
        and ((m.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == name_of(sts)
    ]


def _triton_servers(
    pod: PodTemplate, manager: Mapping[str, Any], manifests: list[Manifest]
) -> list[Finding]:
    findings = []
    listed: dict[str, set[int]] = {}  # StatefulSet name -> ordinals listed
    for server in servers(_env(manager)):
        found = _statefulset_pod(server, pod.namespace, manifests)
        if isinstance(found, str):
            findings.append(
                finding(
                    "triton-servers",
                    pod.owner,
                    f"LASTMILE_TRITON_URL lists {server.host}:{server.port}, {found}",
                    "list each Triton pod as http://<statefulset>-<i>.<headless service>:<http "
                    "port>, one per replica",
                )
            )
        else:
            listed.setdefault(name_of(found[0]), set()).add(found[1])
    for sts_name, ordinals in listed.items():
        sts = next(
            m for m in manifests
            if m.get("kind") == "StatefulSet" and name_of(m) == sts_name
            and namespace_of(m) == pod.namespace
        )  # fmt: skip
        capacity = _capacity(sts, manifests)
        if not set(range(capacity)) <= ordinals:
            findings.append(
                finding(
                    "triton-servers",
                    pod.owner,
                    f"LASTMILE_TRITON_URL lists pods {sorted(ordinals)} of StatefulSet "
                    f"{sts_name!r}, which may have {capacity} pod(s): a pod the manager does "
                    "not list serves no model",
                    f"list {sts_name}-0 to {sts_name}-{capacity - 1} (a range: "
                    f"http://{sts_name}-{{0..{capacity - 1}}}.<headless service>:<port>), or "
                    "lower its replicas and its HPA's maxReplicas",
                )
            )
        findings += _triton_hpa(sts, manifests)
        findings += _triton_control(manager, sts)
    return findings


def _value_source(container: Mapping[str, Any], value: str) -> tuple[str, ...]:
    """Where a value comes from: a Secret/ConfigMap key when it is one $(VAR) taken from
    one, else the text itself."""
    match = re.fullmatch(r"\$\((\w+)\)", value)
    if match:
        for var in container.get("env") or []:
            if var.get("name") == match[1] and "valueFrom" in var:
                source = var["valueFrom"]
                for ref_field in ("secretKeyRef", "configMapKeyRef"):
                    if ref_field in source:
                        ref = source[ref_field]
                        return (ref_field, str(ref.get("name")), str(ref.get("key")))
    return ("text", value)


def _triton_control(manager: Mapping[str, Any], sts: Manifest) -> list[Finding]:
    var = next(
        (e for e in manager.get("env") or [] if e.get("name") == "LASTMILE_TRITON_CONTROL_HEADER"),
        None,
    )
    if var is not None and "valueFrom" in var:
        return []  # the whole header is in a Secret: nothing here to compare
    header = None if var is None else str(var.get("value", ""))
    findings = []
    for template in pod_templates([sts]):
        for triton, _init in template.containers(init=False):
            if "tritonserver" not in [*triton.get("command", []), *triton.get("args", [])]:
                continue  # a sidecar
            flags = flags_of(triton)
            for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
                rules = flags.get(flag, [])
                problem = _control_problem(header, rules, manager, triton)
                if problem:
                    findings.append(
                        finding(
                            "triton-control",
                            sts,
                            f"container {triton.get('name')!r} {flag}: {problem}",
                            f"give Triton {flag}=model-repository:NAME=$(TOKEN) and the manager "
                            "LASTMILE_TRITON_CONTROL_HEADER=NAME=$(TOKEN), TOKEN from the same "
                            "Secret key",
                        )
                    )
    return findings


def _control_problem(
    header: str | None,
    rules: list[str],
    manager: Mapping[str, Any],
    triton: Mapping[str, Any],
) -> str | None:
    if not rules:
        return (
            "not given: the model repository API is open to every pod that reaches Triton"
            if header
            else "not given, and the manager sends no LASTMILE_TRITON_CONTROL_HEADER: "
            "anyone who reaches Triton may load and unload models"
        )
    if header is None:
        return "set, but the manager sends no LASTMILE_TRITON_CONTROL_HEADER: every load fails"
    name, _sep, value = header.partition("=")
    for rule in rules:
        apis, _colon, credential = rule.partition(":")
        if "model-repository" not in apis.split(","):
            continue
        rule_name, _eq, rule_value = credential.partition("=")
        if rule_name.strip().lower() != name.strip().lower():
            return f"requires header {rule_name!r}, the manager sends {name!r}"
        if _value_source(triton, rule_value) != _value_source(manager, value):
            return (
                f"takes the token from {_describe(_value_source(triton, rule_value))}, the "
                f"manager from {_describe(_value_source(manager, value))}: they must be one"
            )
        return None
    return "does not restrict model-repository: anyone who reaches Triton may load models"


def _describe(source: tuple[str, ...]) -> str:
    if source[0] == "text":
        return "literal text in the manifest"
    kind = "Secret" if source[0] == "secretKeyRef" else "ConfigMap"
    return f"{kind} {source[1]!r} key {source[2]!r}"


def _statefulset_pod(
    server: Server, namespace: str, manifests: list[Manifest]
) -> tuple[Manifest, int] | str:
    """(StatefulSet, ordinal) that ``server`` names, or why it names none."""
    labels = server.host.split(".")
    if len(labels) < 2 or (len(labels) > 2 and labels[2] != namespace):
        return "which is not <pod>.<headless service> of this namespace"
    pod_name, service = labels[0], labels[1]
    for m in manifests:
        if m.get("kind") != "StatefulSet" or namespace_of(m) != namespace:
            continue
        spec = m.get("spec") or {}
        prefix = f"{name_of(m)}-"
        if spec.get("serviceName") != service or not pod_name.startswith(prefix):
            continue
        ordinal = pod_name.removeprefix(prefix)
        if not ordinal.isdigit():
            return f"which is not a pod of StatefulSet {name_of(m)!r}"
        ports = {
            p.get("containerPort")
            for template in pod_templates([m])
            for c, _init in template.containers()
            for p in c.get("ports") or []
        }
        grpc_port = int(server.grpc.rsplit(":", 1)[1]) if ":" in server.grpc else 0
        missing = sorted({server.port, grpc_port} - ports)
        if missing:
            return f"but the pods of {name_of(m)!r} declare no container port {missing[0]}"
        return m, int(ordinal)
    return f"but no StatefulSet of this namespace has the governing Service {service!r}"


def _triton_hpa(sts: Manifest, manifests: list[Manifest]) -> list[Finding]:
    findings = []
    for m in _hpas_of(sts, manifests):
        spec = m.get("spec") or {}
        low = int(spec.get("minReplicas", 1))
        if low < 1:
            findings.append(
                finding(
                    "triton-servers",
                    m,
                    f"scales StatefulSet {name_of(sts)!r} down to {low} pods: nothing would "
                    "serve, and the manager waits for at least one Triton when it starts",
                    "set minReplicas to 1 or more",
                )
            )
    return findings


def flags_of(container: Mapping[str, Any]) -> dict[str, list[str]]:
    """--flag value / --flag=value pairs of a container's command and args."""
    argv = [*container.get("command", []), *container.get("args", [])]
    flags: dict[str, list[str]] = {}
    it: Iterator[str] = iter(argv)
    for arg in it:
        if not arg.startswith("--"):
            continue
        name, sep, value = arg.partition("=")
        if not sep:
            value = next(it, "")
        flags.setdefault(name, []).append(value)
    return flags


def _gateway(
    pod: PodTemplate,
    container: Mapping[str, Any],
    manifests: list[Manifest],
    pods: list[PodTemplate],
) -> list[Finding]:
    findings = []
    flags = flags_of(container)
    allowed = {a.lower() for given in flags.get("--allowed-upstream", []) for a in _listed(given)}
    if allowed:  # none given: the gateway accepts any upstream
        for other in pods:
            if other.namespace != pod.namespace:
                continue
            for c, _init in other.containers(init=False):
                for server in servers(_env(c)):
                    for address in (f"{server.host}:{server.port}", server.grpc):
                        if address.lower() not in allowed:
                            findings.append(
                                finding(
                                    "gateway-upstreams",
                                    pod.owner,
                                    f"the manager routes to {address} (LASTMILE_TRITON_URL), "
                                    "which the gateway's --allowed-upstream flags do not allow: "
                                    "it would refuse every routing table",
                                    f"add --allowed-upstream={address}",
                                )
                            )
    for flag in ("--routes-url", "--capture-url"):
        for url in flags.get(flag, []):
            findings += _manager_url(pod, flag, url, manifests)
    findings += _gateway_workers(pod, container, flags)
    return findings


def _gateway_workers(
    pod: PodTemplate, container: Mapping[str, Any], flags: Mapping[str, list[str]]
) -> list[Finding]:
    given = flags.get("--workers", ["1"])[-1]
    try:
        workers = int(given)
    except ValueError:
        return []  # the gateway's own parser refuses it (test_the_gateway_flags_parse)
    if workers <= 1:
        return []
    findings = []
    read_only = (container.get("securityContext") or {}).get("readOnlyRootFilesystem") is True
    tmpdir = _env(container).get("TMPDIR") or "/tmp"
    writable = [
        m["mountPath"].rstrip("/") or "/"
        for m in container.get("volumeMounts") or []
        if m.get("mountPath") and not m.get("readOnly")
    ]
    under_mount = any(tmpdir == w or tmpdir.startswith(w.rstrip("/") + "/") for w in writable)
    if read_only and not under_mount:
        findings.append(
            finding(
                "gateway-workers-tmpdir",
                pod.owner,
                f"the gateway runs {workers} processes (--workers) on a read-only root "
                f"filesystem, and its temporary folder {tmpdir} is on no writable volume: it "
                "refuses to start (its processes share their configuration through a file there)",
                "mount an emptyDir (medium: Memory, a few MiB) at /tmp, or set TMPDIR to a "
                "writable mount",
            )
        )
    cores = _cpu_cores(((container.get("resources") or {}).get("limits") or {}).get("cpu"))
    # `most`: the processes the limit keeps busy
    if cores is not None and workers > (most := max(1, math.ceil(cores))):
        findings.append(
            finding(
                "gateway-workers-cpu",
                pod.owner,
                f"the gateway runs {workers} processes (--workers) under a CPU limit of "
                f"{cores:g} cores: each process keeps at most one core busy, so past the limit "
                "they only take turns (and are throttled)",
                f"use --workers={most} or raise the CPU limit",
            )
        )
    return findings


def _cpu_cores(quantity: object) -> float | None:
    """A Kubernetes CPU quantity ("2", "1.5", "500m") in cores; None when absent or unread."""
    if quantity is None:
        return None
    text = str(quantity).strip()
    try:
        return int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def _manager_url(pod: PodTemplate, flag: str, url: str, manifests: list[Manifest]) -> list[Finding]:
    parts = urlsplit(url)
    host = (parts.hostname or "").split(".")
    port = parts.port or 80
    for m in manifests:
        if m.get("kind") != "Service" or name_of(m) != host[0]:
            continue
        if len(host) > 1 and host[1] != namespace_of(m):
            continue
        if any(p.get("port") == port for p in (m.get("spec") or {}).get("ports") or []):
            return []
    return [
        finding(
            "gateway-routes-url",
            pod.owner,
            f"{flag} {url} names no Service port of these manifests",
            "point it at the manager's Service (http://lastmile-manager:8080/...)",
        )
    ]
