"""Cross-references inside a pod: the ConfigMaps, Secrets, ServiceAccounts and claims it names
exist (with the keys it reads), its volume mounts name its volumes, its probes name its
ports."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from manager.k8s.objects import (
    ExternalSecret,
    Finding,
    Manifest,
    PodTemplate,
    finding,
    name_of,
    namespace_of,
    pod_templates,
)

# (namespace, name) -> keys it holds
Stores = dict[tuple[str, str], set[str]]


@dataclass
class Defined:
    """What the manifests define that pods may refer to."""

    configmaps: Stores = field(default_factory=dict)
    secrets: Stores = field(default_factory=dict)
    external: dict[str, frozenset[str] | None] = field(default_factory=dict)
    service_accounts: set[tuple[str, str]] = field(default_factory=set)
    claims: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def of(cls, manifests: Iterable[Manifest], external: Iterable[ExternalSecret]) -> Defined:
        d = cls(external={e.name: e.keys for e in external})
        for m in manifests:
            key = (namespace_of(m), name_of(m))
            kind = m.get("kind")
            if kind == "ConfigMap":
                d.configmaps[key] = {*(m.get("data") or {}), *(m.get("binaryData") or {})}
            elif kind == "Secret":
                d.secrets[key] = {*(m.get("data") or {}), *(m.get("stringData") or {})}
            elif kind == "ServiceAccount":
                d.service_accounts.add(key)
            elif kind == "PersistentVolumeClaim":
                d.claims.add(key)
        return d


@dataclass(frozen=True)
class Use:
    """One place a pod names a ConfigMap or Secret: who, which, which keys (None: all)."""

    what: str  # e.g. "container 'manager' env LASTMILE_DATABASE_URL"
    kind: str  # ConfigMap | Secret
    name: str
    keys: tuple[str, ...] | None
    optional: bool


def check_pod_references(
    manifests: list[Manifest], external: Iterable[ExternalSecret] = ()
) -> list[Finding]:
    defined = Defined.of(manifests, external)
    findings: list[Finding] = []
    for pod in pod_templates(manifests):
        for use in _uses(pod):
            findings += _check_use(pod, use, defined)
        findings += _service_account(pod, defined)
        findings += _volumes(pod, defined)
        findings += _probe_ports(pod)
    return findings


def _uses(pod: PodTemplate) -> Iterator[Use]:
    for container, init in pod.containers():
        who = f"{'init container' if init else 'container'} {container.get('name')!r}"
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            for ref_field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = source.get(ref_field)
                if ref:
                    yield Use(
                        f"{who} env {env.get('name')}",
                        kind,
                        str(ref.get("name", "")),
                        (str(ref.get("key", "")),),
                        bool(ref.get("optional")),
                    )
        for env_from in container.get("envFrom") or []:
            for ref_field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                ref = env_from.get(ref_field)
                if ref:
                    name = str(ref.get("name", ""))
                    yield Use(f"{who} envFrom", kind, name, None, bool(ref.get("optional")))
    for volume in pod.spec.get("volumes") or []:
        who = f"volume {volume.get('name')!r}"
        sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
        for source in sources:
            secret, config = source.get("secret"), source.get("configMap")
            if secret:
                name = secret.get("secretName") or secret.get("name") or ""
                yield Use(who, "Secret", name, _item_keys(secret), bool(secret.get("optional")))
            if config:
                name = str(config.get("name", ""))
                yield Use(who, "ConfigMap", name, _item_keys(config), bool(config.get("optional")))
    for pull in pod.spec.get("imagePullSecrets") or []:
        yield Use("imagePullSecrets", "Secret", str(pull.get("name", "")), None, False)


def _item_keys(source: Mapping[str, Any]) -> tuple[str, ...] | None:
    items = source.get("items")
    return tuple(str(i.get("key", "")) for i in items) if items else None


def _check_use(pod: PodTemplate, use: Use, defined: Defined) -> list[Finding]:
    if use.optional:
        return []
    check = "secret-ref" if use.kind == "Secret" else "configmap-ref"
    stores = defined.secrets if use.kind == "Secret" else defined.configmaps
    keys = stores.get((pod.namespace, use.name))
    declared = "defined"
    if keys is None and use.kind == "Secret" and use.name in defined.external:
        external_keys = defined.external[use.name]
        if external_keys is None:
            return []
        keys, declared = set(external_keys), "declared (external-secrets.txt)"
    if keys is None:
        fix = (
            "define it (e.g. a secretGenerator in the overlay), or, if the operator creates it, "
            "list it with its keys in the overlay's external-secrets.txt"
            if use.kind == "Secret"
            else "define it (e.g. a configMapGenerator), or fix the name"
        )
        return [
            finding(
                check,
                pod.owner,
                f"{use.what} reads {use.kind} {use.name!r}, which no manifest defines"
                + (" or declares external" if use.kind == "Secret" else ""),
                fix,
            )
        ]
    missing = [k for k in use.keys or () if k not in keys]
    if not missing:
        return []
    return [
        finding(
            check,
            pod.owner,
            f"{use.what} reads key(s) {', '.join(missing)} of {use.kind} {use.name!r}, whose "
            f"{declared} keys are {', '.join(sorted(keys)) or 'none'}",
            f"add the key to the {use.kind}, or read one it has",
        )
    ]


def _service_account(pod: PodTemplate, defined: Defined) -> list[Finding]:
    name = pod.spec.get("serviceAccountName") or pod.spec.get("serviceAccount")
    if not name or name == "default" or (pod.namespace, name) in defined.service_accounts:
        return []
    return [
        finding(
            "serviceaccount-ref",
            pod.owner,
            f"its pods run as ServiceAccount {name!r}, which no manifest defines",
            "add the ServiceAccount (with automountServiceAccountToken: false unless the pod "
            "calls the Kubernetes API), or fix the name",
        )
    ]


def _volumes(pod: PodTemplate, defined: Defined) -> list[Finding]:
    findings = []
    volumes = {v.get("name") for v in pod.spec.get("volumes") or []}
    templates = {
        (t.get("metadata") or {}).get("name")
        for t in (pod.owner.get("spec") or {}).get("volumeClaimTemplates") or []
    }
    for volume in pod.spec.get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and (pod.namespace, claim) not in defined.claims:
            findings.append(
                finding(
                    "pvc-ref",
                    pod.owner,
                    f"volume {volume.get('name')!r} uses PersistentVolumeClaim {claim!r}, which "
                    "no manifest defines",
                    "add the PersistentVolumeClaim, or use a StatefulSet volumeClaimTemplate",
                )
            )
    for container, init in pod.containers():
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes | templates:
                kind = "init container" if init else "container"
                findings.append(
                    finding(
                        "volume-mount",
                        pod.owner,
                        f"{kind} {container.get('name')!r} mounts volume {mount.get('name')!r} "
                        f"at {mount.get('mountPath')}, which the pod does not define",
                        "add the volume to the pod's volumes (or the StatefulSet's "
                        "volumeClaimTemplates), or fix the name",
                    )
                )
    return findings


def _probe_ports(pod: PodTemplate) -> list[Finding]:
    findings = []
    for container, _init in pod.containers():
        names = {p.get("name") for p in container.get("ports") or [] if p.get("name")}
        for probe_field in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(probe_field) or {}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = (probe.get(handler) or {}).get("port")
                if isinstance(port, str) and port not in names:
                    findings.append(
                        finding(
                            "probe-port",
                            pod.owner,
                            f"container {container.get('name')!r} {probe_field} uses port "
                            f"{port!r}, which the container does not name (its ports: "
                            f"{', '.join(sorted(names)) or 'none'})",
                            "name the container port, or give the probe a number",
                        )
                    )
    return findings
