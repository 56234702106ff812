"""What every pod and container must have: pinned images, requests and limits, probes, a
non-root restricted security context; and the labels every object carries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from manager.k8s.objects import (
    Finding,
    Manifest,
    PodTemplate,
    finding,
    labels_of,
    pod_templates,
)

REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
)
RESOURCES = ("cpu", "memory")


def check_pods(manifests: Iterable[Manifest]) -> list[Finding]:
    findings: list[Finding] = []
    for pod in pod_templates(manifests):
        for container, init in pod.containers():
            what = f"{'init container' if init else 'container'} {container.get('name')!r}"
            findings += _image(pod, container, what)
            findings += _resources(pod, container, what)
            if pod.long_running and not init:
                findings += _probes(pod, container, what)
            findings += _security(pod, container, what)
    return findings


def image_is_pinned(image: str) -> bool:
    """A digest, or a tag other than ``latest`` (no tag means latest)."""
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return last.rsplit(":", 1)[1] not in ("", "latest")


def _image(pod: PodTemplate, container: Mapping[str, Any], what: str) -> list[Finding]:
    image = str(container.get("image") or "")
    if image_is_pinned(image):
        return []
    return [
        finding(
            "image-pinned",
            pod.owner,
            f"{what} uses image {image!r}, which is not pinned (a missing tag or :latest "
            "changes under you)",
            "give a version tag (e.g. nvcr.io/nvidia/tritonserver:24.10-py3) or a digest",
        )
    ]


def _resources(pod: PodTemplate, container: Mapping[str, Any], what: str) -> list[Finding]:
    resources = container.get("resources") or {}
    missing = [
        f"{part}.{name}"
        for part in ("requests", "limits")
        for name in RESOURCES
        if name not in (resources.get(part) or {})
    ]
    if not missing:
        return []
    return [
        finding(
            "resources",
            pod.owner,
            f"{what} has no resources.{', resources.'.join(missing)}",
            "set requests (what the scheduler reserves) and limits (the most it may use) for "
            "cpu and memory",
        )
    ]


def _probes(pod: PodTemplate, container: Mapping[str, Any], what: str) -> list[Finding]:
    missing = [p for p in ("livenessProbe", "readinessProbe") if not container.get(p)]
    if not missing:
        return []
    return [
        finding(
            "probes",
            pod.owner,
            f"{what} runs for good but has no {' and no '.join(missing)}",
            "add the missing probe (e.g. httpGet on the program's health endpoint): without "
            "liveness a wedged process is never restarted, without readiness traffic reaches "
            "it too early",
        )
    ]


def _security(pod: PodTemplate, container: Mapping[str, Any], what: str) -> list[Finding]:
    pod_sc = pod.spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}

    def effective(field: str) -> Any:
        return sc[field] if field in sc else pod_sc.get(field)

    problems: list[tuple[str, str]] = []
    user = effective("runAsUser")
    if effective("runAsNonRoot") is not True:
        problems.append(("runAsNonRoot is not true", "set runAsNonRoot: true"))
    if user is None:
        problems.append(
            (
                "has no numeric runAsUser (the image's USER decides, maybe root)",
                "set runAsUser to the image's non-root uid",
            )
        )
    elif user == 0:
        problems.append(("runs as root (runAsUser 0)", "set runAsUser to a non-root uid"))
    if sc.get("privileged") is True:
        problems.append(("is privileged", "remove privileged: true"))
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(
            (
                "may escalate privileges",
                "set allowPrivilegeEscalation: false in its securityContext",
            )
        )
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problems.append(("keeps Linux capabilities", "set capabilities: {drop: [ALL]}"))
    seccomp = (effective("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        problems.append(
            ("has no seccomp profile", "set seccompProfile: {type: RuntimeDefault} on the pod")
        )
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(
            (
                "can write its root filesystem",
                "set readOnlyRootFilesystem: true and mount an emptyDir where it writes",
            )
        )
    return [
        finding("security-context", pod.owner, f"{what} {problem}", fix)
        for problem, fix in problems
    ]


def check_labels(
    manifests: Iterable[Manifest], required: tuple[str, ...] = REQUIRED_LABELS
) -> list[Finding]:
    findings = []
    for m in manifests:
        missing = [key for key in required if key not in labels_of(m)]
        if missing:
            findings.append(
                finding(
                    "labels",
                    m,
                    f"metadata.labels lacks {', '.join(missing)}",
                    "label every object with " + ", ".join(required),
                )
            )
    for pod in pod_templates(manifests):
        if pod.owner.get("kind") == "Pod":
            continue  # its labels are the object's, checked above
        missing = [key for key in required if key not in pod.labels]
        if missing:
            findings.append(
                finding(
                    "labels",
                    pod.owner,
                    f"its pod template's labels lack {', '.join(missing)}",
                    "label the pods too: Prometheus, NetworkPolicies and dashboards select them",
                )
            )
    return findings
