"""Is each manifest a valid object of its kind? Offline, for a pinned Kubernetes version.

Core kinds are validated against the Kubernetes OpenAPI schemas bundled in the PyPI package
``kubernetes-validate``, in strict mode (an unknown field is an error, as ``kubectl apply
--validate=strict`` would say). Custom resources have no schema there: the kinds used in
deploy/ get a structural check of their own (``manager.k8s.crds``); any other kind is a
finding, never skipped silently.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from manager.errors import RuntimeSetupError
from manager.k8s.crds import CRD_SHAPES, shape_errors
from manager.k8s.objects import Finding, Manifest, finding

KUBERNETES_VERSION = "1.31.0"


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError as exc:
        raise RuntimeSetupError(
            "the manifest checker needs the package kubernetes-validate",
            hint="pip install -e '.[dev]' (it pins kubernetes-validate)",
        ) from exc
    return kubernetes_validate


def check_schemas(
    manifests: Iterable[Manifest], *, version: str = KUBERNETES_VERSION
) -> list[Finding]:
    findings = []
    for m in manifests:
        key = (m.get("apiVersion", ""), m.get("kind", ""))
        if key in CRD_SHAPES:
            findings += [
                finding(
                    "crd-schema",
                    m,
                    f"{where}: {problem}",
                    f"see the {key[1]} reference of its operator ({key[0]})",
                )
                for where, problem in shape_errors(m, CRD_SHAPES[key])
            ]
            continue
        outcome = _validate(json.dumps(m, sort_keys=True), version)
        if outcome is None:
            continue
        if outcome[0] == "no-schema":
            findings.append(
                finding(
                    "unknown-kind",
                    m,
                    f"no schema for {key[1]} ({key[0]}) in Kubernetes {version}, and no "
                    "structural check for it: nothing would catch a typo in it",
                    "use a core API version, or add a shape for this custom resource to "
                    "manager/k8s/crds.py",
                )
            )
            continue
        where, message = outcome[1], outcome[2]
        findings.append(
            finding(
                "schema",
                m,
                f"{where}: {message} (Kubernetes {version} schema, strict; the first error of "
                "this object)",
                f"correct the field; `kubectl explain {m.get('kind')}.{where}` describes what "
                "is allowed",
            )
        )
    return findings


@functools.lru_cache(maxsize=4096)
def _validate(text: str, version: str) -> tuple[str, str, str] | None:
    """None when the object (as canonical JSON) is valid, else ("invalid", where, message)
    or ("no-schema", "", ""). Cached: kubernetes-validate reads its 1.3 MB of definitions on
    every call, and a check run often sees the same objects again."""
    kv = _validator()
    try:
        kv.validate(json.loads(text), version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top level)"
        return "invalid", where, str(exc.message)
    except kv.SchemaNotFoundError:
        return "no-schema", "", ""
    return None
