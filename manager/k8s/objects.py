"""What the checks share: the finding type, and plain-dict helpers to walk manifests.

Manifests are the dicts ``kustomize build`` prints (``manager.k8s.render``); nothing here talks
to a cluster. A namespace left out of a manifest counts as "" (the one ``kubectl apply -n``
would give it), so objects without one still find each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]

# Workloads whose pods run until stopped (they need liveness and readiness probes).
LONG_RUNNING = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod"})
WORKLOADS = LONG_RUNNING | {"Job", "CronJob"}


@dataclass(frozen=True)
class Finding:
    """One thing wrong with one object: what, where, and how to fix it."""

    check: str  # short id, e.g. "image-pinned"
    kind: str
    name: str
    namespace: str
    problem: str
    fix: str

    @property
    def where(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind} {self.name}")
        )

    def __str__(self) -> str:
        return f"{self.where} [{self.check}]: {self.problem}. Fix: {self.fix}"


@dataclass(frozen=True)
class ExternalSecret:
    """A Secret the operator creates outside these manifests; ``keys`` None: any key."""

    name: str
    keys: frozenset[str] | None = None


def finding(check: str, manifest: Mapping[str, Any], problem: str, fix: str) -> Finding:
    return Finding(
        check=check,
        kind=str(manifest.get("kind", "?")),
        name=name_of(manifest),
        namespace=namespace_of(manifest),
        problem=problem,
        fix=fix,
    )


def name_of(manifest: Mapping[str, Any]) -> str:
    return str((manifest.get("metadata") or {}).get("name", "?"))


def namespace_of(manifest: Mapping[str, Any]) -> str:
    return str((manifest.get("metadata") or {}).get("namespace") or "")


def labels_of(manifest: Mapping[str, Any]) -> dict[str, str]:
    return dict((manifest.get("metadata") or {}).get("labels") or {})


def index(manifests: Iterable[Manifest]) -> dict[tuple[str, str, str], Manifest]:
    """(kind, namespace, name) -> manifest."""
    return {(m.get("kind", ""), namespace_of(m), name_of(m)): m for m in manifests}


@dataclass(frozen=True)
class PodTemplate:
    """The pod a workload makes: its owner, the pod spec and the pod's labels."""

    owner: Manifest
    spec: dict[str, Any]
    labels: dict[str, str]

    @property
    def namespace(self) -> str:
        return namespace_of(self.owner)

    @property
    def long_running(self) -> bool:
        return self.owner.get("kind") in LONG_RUNNING

    def containers(self, *, init: bool = True) -> Iterator[tuple[dict[str, Any], bool]]:
        """(container, is_init) for every container of the pod."""
        if init:
            for container in self.spec.get("initContainers") or []:
                yield container, True
        for container in self.spec.get("containers") or []:
            yield container, False


def pod_templates(manifests: Iterable[Manifest]) -> list[PodTemplate]:
    templates = []
    for m in manifests:
        kind = m.get("kind")
        if kind == "Pod":
            template: Mapping[str, Any] | None = m
        elif kind == "CronJob":
            job = ((m.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
            template = job.get("template")
        elif kind in WORKLOADS:
            template = (m.get("spec") or {}).get("template")
        else:
            continue
        if not template:
            continue
        templates.append(
            PodTemplate(owner=m, spec=dict(template.get("spec") or {}), labels=labels_of(template))
        )
    return templates


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels / matchExpressions) matches ``labels``.
    An empty selector matches everything; None matches nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def selects_map(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Service's selector: a plain map, all of which must match."""
    return all(labels.get(k) == v for k, v in selector.items())


def describe_selector(selector: Mapping[str, Any]) -> str:
    """``a=b, c In [...]`` for a label selector or a Service's plain selector map."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        labels = selector.get("matchLabels") or {}
        expressions = selector.get("matchExpressions") or []
    else:
        labels, expressions = selector, []
    parts = [f"{k}={v}" for k, v in labels.items()]
    parts += [f"{e.get('key')} {e.get('operator')} {e.get('values') or ''}" for e in expressions]
    return ", ".join(parts) or "{} (everything)"
