"""Names that reach paths, configs and Triton are checked here first (DESIGN §5)."""

from __future__ import annotations

import re

from manager.errors import InvalidInput

# Lower-case letters, digits, '_' and '-', starting with a letter: safe as a folder name, a
# Triton model name and a URL segment. '.' is reserved as the separator of generated names.
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
TENSOR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")


def check_name(value: str, *, kind: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidInput(
            f"invalid {kind} name {value!r}",
            hint="use 1-63 lower-case letters, digits, '_' or '-', starting with a letter "
            "(e.g. 'fraud-scaler')",
        )
    return value


def check_tensor_name(value: str, *, where: str) -> str:
    if not isinstance(value, str) or not TENSOR_RE.fullmatch(value) or ".." in value:
        raise InvalidInput(
            f"invalid tensor name {value!r} in {where}",
            hint="tensor names use letters, digits and '_.:/-', start with a letter or '_' "
            "and have at most 128 characters",
        )
    return value


def triton_model_name(workspace: str, model: str) -> str:
    """Name of a registered model on Triton: one Triton model per registered model."""
    return f"{workspace}.{model}"


def triton_ensemble_name(workspace: str, pipeline: str, version: int) -> str:
    """Name of a pipeline version's ensemble on Triton."""
    return f"{workspace}.{pipeline}.v{version}"


def copy_prefix(workspace: str, pipeline: str, version: int) -> str:
    """Prefix of the step models private to one pipeline version (blue/green's complete
    second copy): its ensemble's name."""
    return triton_ensemble_name(workspace, pipeline, version)


def step_model_name(workspace: str, model: str, prefix: str | None = None) -> str:
    """Triton name of a pipeline step's model: the workspace's shared one, or with ``prefix``
    (``copy_prefix``) the pipeline version's own copy ``<ws>.<pipeline>.v<N>.<model>``."""
    return f"{prefix}.{model}" if prefix else triton_model_name(workspace, model)


# An API key: "lm_" + the key id (12 hex digits) + "_" + 32 random bytes, base64url.
KEY_RE = re.compile(r"lm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
