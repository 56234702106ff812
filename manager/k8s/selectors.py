"""Cross-references between objects: selectors that must select something, and names of
other objects that must exist (Services, StatefulSets' governing Services, HPAs, PDBs,
NetworkPolicies, ServiceMonitors)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from manager.k8s.objects import (
    Finding,
    Manifest,
    PodTemplate,
    describe_selector,
    finding,
    index,
    labels_of,
    name_of,
    namespace_of,
    pod_templates,
    selects,
    selects_map,
)

ADAPTER_RULES_ANNOTATION = "lastmile.ai/prometheus-adapter-rules"
SCALABLE = {"Deployment": "apps", "StatefulSet": "apps", "ReplicaSet": "apps"}


def check_selectors(manifests: list[Manifest]) -> list[Finding]:
    pods = pod_templates(manifests)
    findings: list[Finding] = []
    for m in manifests:
        kind = m.get("kind")
        if kind == "Service":
            findings += _service(m, pods)
        elif kind == "StatefulSet":
            findings += _statefulset(m, manifests, pods)
        elif kind == "HorizontalPodAutoscaler":
            findings += _hpa(m, manifests)
        elif kind == "PodDisruptionBudget":
            findings += _selects_pods(
                "pdb-selector", m, (m.get("spec") or {}).get("selector"), pods
            )
        elif kind == "NetworkPolicy":
            findings += _network_policy(m, pods)
        elif kind == "ServiceMonitor":
            findings += _service_monitor(m, manifests)
        if kind in SCALABLE or kind in ("DaemonSet", "Job"):
            findings += _workload_selector(m)
    return findings


def _pods_in(namespace: str, pods: Iterable[PodTemplate]) -> list[PodTemplate]:
    return [p for p in pods if p.namespace == namespace]


def _selects_pods(
    check: str, m: Manifest, selector: Mapping[str, Any] | None, pods: list[PodTemplate]
) -> list[Finding]:
    if selector is None:
        return []
    if any(selects(selector, p.labels) for p in _pods_in(namespace_of(m), pods)):
        return []
    return [
        finding(
            check,
            m,
            f"its selector ({describe_selector(selector)}) matches no pod template in "
            f"namespace {namespace_of(m) or '(none)'}",
            "use the labels of the pods it is meant for (their template's metadata.labels)",
        )
    ]


def _service(m: Manifest, pods: list[PodTemplate]) -> list[Finding]:
    spec = m.get("spec") or {}
    selector = spec.get("selector")
    if not selector:  # ExternalName or hand-made Endpoints
        return []
    chosen = [p for p in _pods_in(namespace_of(m), pods) if selects_map(selector, p.labels)]
    if not chosen:
        return [
            finding(
                "service-selector",
                m,
                f"its selector ({describe_selector(selector)}) matches no pod template: it "
                "would have no endpoints",
                "use the labels of the pods it fronts (their template's metadata.labels)",
            )
        ]
    findings = []
    for port in spec.get("ports") or []:
        target = port.get("targetPort")
        if not isinstance(target, str):
            continue
        if not any(target in _port_names(p) for p in chosen):
            findings.append(
                finding(
                    "service-port",
                    m,
                    f"port {port.get('name') or port.get('port')} targets the container port "
                    f"named {target!r}, which none of its pods declares",
                    "name the container port so, or target a port the pods declare",
                )
            )
    return findings


def _port_names(pod: PodTemplate) -> set[str]:
    return {
        str(port["name"])
        for container, _init in pod.containers()
        for port in container.get("ports") or []
        if port.get("name")
    }


def _workload_selector(m: Manifest) -> list[Finding]:
    spec = m.get("spec") or {}
    selector = spec.get("selector")
    template_labels = labels_of(spec.get("template") or {})
    if selector is None or selects(selector, template_labels):
        return []
    return [
        finding(
            "workload-selector",
            m,
            f"spec.selector ({describe_selector(selector)}) does not match its own pod "
            "template's labels: the API server refuses it",
            "make spec.template.metadata.labels include every spec.selector label",
        )
    ]


def _statefulset(m: Manifest, manifests: list[Manifest], pods: list[PodTemplate]) -> list[Finding]:
    service_name = (m.get("spec") or {}).get("serviceName")
    if not service_name:
        return []
    service = index(manifests).get(("Service", namespace_of(m), service_name))
    mine = [p for p in pods if p.owner is m]
    problem = None
    if service is None:
        problem = "which no manifest defines: its pods get no stable DNS names"
    elif (service.get("spec") or {}).get("clusterIP") != "None":
        problem = "which is not headless (clusterIP: None): its pods get no stable DNS names"
    elif not any(
        selects_map((service.get("spec") or {}).get("selector") or {}, p.labels) for p in mine
    ):
        problem = "which does not select this StatefulSet's pods"
    if problem is None:
        return []
    return [
        finding(
            "statefulset-service",
            m,
            f"spec.serviceName is {service_name!r}, {problem}",
            "add a headless Service (clusterIP: None) of that name selecting these pods",
        )
    ]


def _hpa(m: Manifest, manifests: list[Manifest]) -> list[Finding]:
    spec = m.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    kind, name = ref.get("kind", ""), ref.get("name", "")
    target = index(manifests).get((kind, namespace_of(m), name))
    findings = []
    if target is None:
        findings.append(
            finding(
                "hpa-target",
                m,
                f"scaleTargetRef names {kind} {name!r}, which no manifest defines",
                "point it at a Deployment or StatefulSet of these manifests",
            )
        )
    elif kind in SCALABLE and str(ref.get("apiVersion", "")).split("/")[0] != SCALABLE[kind]:
        findings.append(
            finding(
                "hpa-target",
                m,
                f"scaleTargetRef apiVersion {ref.get('apiVersion')!r} is not {kind}'s (apps/v1)",
                "use apiVersion: apps/v1",
            )
        )
    if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
        findings.append(
            finding(
                "hpa-range",
                m,
                f"minReplicas {spec.get('minReplicas', 1)} > maxReplicas {spec.get('maxReplicas')}",
                "make minReplicas <= maxReplicas",
            )
        )
    exposed = adapter_metrics(manifests)
    for metric in spec.get("metrics") or []:
        findings += _hpa_metric(m, metric, target, exposed)
    return findings


def _hpa_metric(
    m: Manifest, metric: Mapping[str, Any], target: Manifest | None, exposed: set[str] | None
) -> list[Finding]:
    kind = metric.get("type")
    if kind == "Resource" and target is not None:
        resource = (metric.get("resource") or {}).get("name")
        if ((metric.get("resource") or {}).get("target") or {}).get("type") != "Utilization":
            return []
        lacking = [
            str(c.get("name"))
            for pod in pod_templates([target])
            for c, _init in pod.containers(init=False)
            if resource not in ((c.get("resources") or {}).get("requests") or {})
        ]
        if lacking:
            return [
                finding(
                    "hpa-metric",
                    m,
                    f"scales on {resource} utilisation, but container(s) {', '.join(lacking)} "
                    f"of its target request no {resource}: the HPA cannot compute it",
                    f"give every container of the target a {resource} request",
                )
            ]
    if kind in ("Pods", "Object"):
        name = ((metric.get(kind.lower()) or {}).get("metric") or {}).get("name")
        if exposed is None or name not in exposed:
            known = ", ".join(sorted(exposed or ())) or "none"
            return [
                finding(
                    "hpa-metric",
                    m,
                    f"scales on custom metric {name!r}, which no prometheus-adapter rules "
                    f"ConfigMap of these manifests exposes (exposed: {known})",
                    f"add a rule naming it (a ConfigMap annotated {ADAPTER_RULES_ANNOTATION}: "
                    "<key of the rules file>), or use an exposed metric",
                )
            ]
    return []


def adapter_metrics(manifests: Iterable[Manifest]) -> set[str] | None:
    """Custom metric names the prometheus-adapter rules ConfigMaps expose (``name.as``);
    None when there is no such ConfigMap."""
    names: set[str] | None = None
    for m in manifests:
        key = ((m.get("metadata") or {}).get("annotations") or {}).get(ADAPTER_RULES_ANNOTATION)
        if m.get("kind") != "ConfigMap" or not key:
            continue
        names = names or set()
        try:
            config = yaml.safe_load((m.get("data") or {}).get(key) or "") or {}
        except yaml.YAMLError:
            continue  # reported by check_adapter_rules
        for rule in config.get("rules") or [] if isinstance(config, dict) else []:
            alias = ((rule or {}).get("name") or {}).get("as") if isinstance(rule, dict) else None
            if alias:
                names.add(str(alias))
    return names


def check_adapter_rules(manifests: Iterable[Manifest]) -> list[Finding]:
    """The rules file of each annotated ConfigMap parses and each rule is complete."""
    findings = []
    for m in manifests:
        key = ((m.get("metadata") or {}).get("annotations") or {}).get(ADAPTER_RULES_ANNOTATION)
        if m.get("kind") != "ConfigMap" or not key:
            continue
        text = (m.get("data") or {}).get(key)
        try:
            config = yaml.safe_load(text or "")
        except yaml.YAMLError as exc:
            config, problem = None, f"data[{key!r}] is not YAML: {exc}"
        else:
            problem = f"data[{key!r}] has no `rules:` list"
        rules = config.get("rules") if isinstance(config, dict) else None
        if not isinstance(rules, list):
            findings.append(
                finding("adapter-rules", m, problem, "write prometheus-adapter's config format")
            )
            continue
        for i, rule in enumerate(rules):
            missing = [
                f for f in ("seriesQuery", "metricsQuery", "resources", "name")
                if not isinstance(rule, dict) or f not in rule
            ]  # fmt: skip
            if missing:
                findings.append(
                    finding(
                        "adapter-rules",
                        m,
                        f"rule {i} lacks {', '.join(missing)}",
                        "see prometheus-adapter's config walkthrough",
                    )
                )
    return findings


def _network_policy(m: Manifest, pods: list[PodTemplate]) -> list[Finding]:
    spec = m.get("spec") or {}
    findings = _selects_pods("networkpolicy-selector", m, spec.get("podSelector"), pods)
    for direction, peers_field in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            for peer in rule.get(peers_field) or []:
                if "podSelector" not in peer or "namespaceSelector" in peer:
                    continue  # another namespace's pods, or an IP block: not ours to see
                if not any(
                    selects(peer["podSelector"], p.labels) for p in _pods_in(namespace_of(m), pods)
                ):
                    findings.append(
                        finding(
                            "networkpolicy-selector",
                            m,
                            f"{direction}[{i}].{peers_field} podSelector "
                            f"({describe_selector(peer['podSelector'])}) matches no pod "
                            "template in its namespace: that rule lets nothing through",
                            "use the labels of the pods meant (their template's metadata.labels)",
                        )
                    )
    return findings


def _service_monitor(m: Manifest, manifests: list[Manifest]) -> list[Finding]:
    spec = m.get("spec") or {}
    namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [namespace_of(m)]
    services = [
        s for s in manifests
        if s.get("kind") == "Service" and namespace_of(s) in namespaces
        and selects(spec.get("selector") or {}, labels_of(s))
    ]  # fmt: skip
    if not services:
        return [
            finding(
                "servicemonitor-selector",
                m,
                f"its selector ({describe_selector(spec.get('selector') or {})}) matches no "
                f"Service in {', '.join(namespaces)}: Prometheus would scrape nothing",
                "select the labels of the Service in front of the pods to scrape",
            )
        ]
    findings = []
    for i, endpoint in enumerate(spec.get("endpoints") or []):
        port = endpoint.get("port")
        if port is None and endpoint.get("targetPort") is None:
            findings.append(
                finding("servicemonitor-port", m, f"endpoints[{i}] names no port", "set port")
            )
        elif port is not None and not any(
            port == p.get("name")
            for s in services
            for p in (s.get("spec") or {}).get("ports") or []
        ):
            findings.append(
                finding(
                    "servicemonitor-port",
                    m,
                    f"endpoints[{i}] scrapes port {port!r}, which none of the selected Services "
                    f"({', '.join(name_of(s) for s in services)}) names",
                    "use the Service port's name",
                )
            )
    return findings
