"""``check(manifests)``: everything the manifest checker knows, as one list of findings.

Each finding names the object, says what is wrong and how to fix it; an empty list means the
manifests passed every check:

- schema: each object against the Kubernetes OpenAPI schema (strict), custom resources
  against their shape (``manager.k8s.schema``, ``manager.k8s.crds``);
- references inside pods: ConfigMaps, Secrets (or the ones declared external), their keys,
  ServiceAccounts, claims, volume mounts, probe ports (``manager.k8s.refs``);
- references between objects: Service, PDB, NetworkPolicy and ServiceMonitor selectors, HPA
  targets and custom metrics, StatefulSets' governing Services (``manager.k8s.selectors``);
- pods: pinned images, requests and limits, probes, a non-root restricted security context,
  and the labels every object carries (``manager.k8s.pods``);
- Lastmile's own: the manager's Triton list, the StatefulSet, its HPA, the Triton control
  token and the gateways' allowed upstreams and routes URL agree (``manager.k8s.lastmile``).
"""

from __future__ import annotations

from collections.abc import Iterable

from manager.k8s.lastmile import check_lastmile
from manager.k8s.objects import ExternalSecret, Finding, Manifest
from manager.k8s.pods import REQUIRED_LABELS, check_labels, check_pods
from manager.k8s.refs import check_pod_references
from manager.k8s.schema import KUBERNETES_VERSION, check_schemas
from manager.k8s.selectors import check_adapter_rules, check_selectors


def check(
    manifests: Iterable[Manifest],
    *,
    external_secrets: Iterable[ExternalSecret | str] = (),
    kubernetes_version: str = KUBERNETES_VERSION,
    required_labels: tuple[str, ...] = REQUIRED_LABELS,
) -> list[Finding]:
    """Every finding for these manifests (as ``kustomize build`` prints them).

    ``external_secrets``: Secrets the operator creates outside the manifests (a plain name
    allows any key of it).
    """
    objects = list(manifests)
    external = [e if isinstance(e, ExternalSecret) else ExternalSecret(e) for e in external_secrets]
    return [
        *check_schemas(objects, version=kubernetes_version),
        *check_pod_references(objects, external),
        *check_selectors(objects),
        *check_adapter_rules(objects),
        *check_pods(objects),
        *check_labels(objects, required_labels),
        *check_lastmile(objects),
    ]
