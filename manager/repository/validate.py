"""Validates a whole Triton model repository folder before Triton ever sees it.

Triton checks a repository only while loading it, one model at a time, and its messages name
internal tensors. Here every model is checked at once, by the rules Triton applies
(``model_config_utils.cc``, ``ensemble_utils.cc``), and each problem says which model, which
step and which tensor, and how to fix it. Nothing stops at the first problem: a missing model
file is reported next to a data type mismatch in the ensemble that uses it.

``reader`` parses the folder, this module checks each model on its own, ``ensembles`` checks
what ensembles need from the models they name, ``decoupled`` which response stream each
ensemble tensor belongs to. A folder that is one model (it holds ``config.pbtxt``) is checked
as a repository of only that model, and an empty repository is a warning, not a pass.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from manager.repository.decoupled import check_decoupled_streams
from manager.repository.ensembles import check_ensemble, find_ensemble_cycles
from manager.repository.reader import (
    CONFIG_FILENAME,
    Problem,
    RepoModel,
    Repository,
    read_model_folder,
    read_repository,
)
from manager.triton.client import model_config_pb2

log = logging.getLogger(__name__)

__all__ = [
    "Problem",
    "RepoModel",
    "Repository",
    "check_model",
    "effective_backend",
    "errors",
    "is_model_folder",
    "model_file_name",
    "read_repository",
    "read_repository_or_model",
    "validate_repository",
]

# Platform → the backend Triton resolves it to (it does this even without auto-complete).
_PLATFORM_BACKEND = {
    "onnxruntime_onnx": "onnxruntime",
    "tensorrt_plan": "tensorrt",
    "pytorch_libtorch": "pytorch",
    "torch_aoti": "pytorch",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
}
# Backend (and platform, where it decides) → the file each version folder must hold, and
# whether that entry is a folder. Backends not listed (identity, custom ones) need no file
# we can predict.
_MODEL_FILES: dict[tuple[str, str], tuple[str, bool | None]] = {
    ("onnxruntime", ""): ("model.onnx", None),  # a file, or a folder with external data
    ("tensorrt", ""): ("model.plan", False),
    ("python", ""): ("model.py", False),
    ("pytorch", ""): ("model.pt", False),
    ("pytorch", "torch_aoti"): ("model.pt2", False),
    ("tensorflow", ""): ("model.savedmodel", True),
    ("tensorflow", "tensorflow_savedmodel"): ("model.savedmodel", True),
    ("tensorflow", "tensorflow_graphdef"): ("model.graphdef", False),
    ("openvino", ""): ("model.xml", False),
}


def effective_backend(model: RepoModel) -> str:
    config = model.config
    return str(config.backend or _PLATFORM_BACKEND.get(config.platform, ""))


def _check_identity(model: RepoModel) -> list[Problem]:
    config = model.config
    problems = []
    if config.name and config.name != model.name:
        problems.append(
            Problem(
                model.name,
                "config.pbtxt",
                f"names the model {config.name!r} but its folder is {model.name!r}",
                hint=f'Triton requires them to match: set name: "{model.name}" or rename '
                "the folder",
                rule="name-mismatch",
            )
        )
    if model.is_ensemble:
        return problems  # the ensemble rules check its fields
    if config.HasField("ensemble_scheduling"):
        problems.append(
            Problem(
                model.name,
                "ensemble_scheduling",
                f"only an ensemble may set it, and the platform is {config.platform!r}",
                hint='set platform: "ensemble" (and no backend), or remove the steps',
                rule="ensemble-field",
            )
        )
    backend = effective_backend(model)
    if not backend:
        what = f"platform {config.platform!r} is unknown" if config.platform else "none is set"
        problems.append(
            Problem(
                model.name,
                "config.pbtxt",
                f"the config names no backend ({what})",
                hint='set backend, e.g. backend: "onnxruntime" or "python"',
                rule="no-backend",
            )
        )
    elif config.platform and config.backend:
        implied = _PLATFORM_BACKEND.get(config.platform)
        if implied is not None and implied != config.backend:
            problems.append(
                Problem(
                    model.name,
                    "config.pbtxt",
                    f"platform {config.platform!r} does not go with backend {config.backend!r}",
                    hint="remove the platform or set the backend it belongs to",
                    rule="backend-platform-mismatch",
                )
            )
    return problems


def _element_count(dims: list[int]) -> int:
    count = 1
    for dim in dims:
        if dim == -1:
            return -1
        count *= dim
    return count


def _chunks(dims: list[int]) -> list[int]:
    """Element counts between variable-size dims: [2, 4, -1, 6] → [8, 6]."""
    counts, current = [], 1
    for dim in dims:
        if dim == -1:
            counts.append(current)
            current = 1
        else:
            current *= dim
    counts.append(current)
    return counts


def _tensor_problem(io: model_config_pb2.ModelInput, batching: bool) -> str | None:
    if io.data_type == model_config_pb2.TYPE_INVALID:
        return "has no data_type"
    dims = list(io.dims)
    if not dims:
        return "has no dims (use [1] for a scalar per batch item)"
    if any(d < 1 and d != -1 for d in dims):
        return f"has dims {dims}: each must be >= 1, or -1 for a variable size"
    if not io.HasField("reshape"):
        return None
    shape = list(io.reshape.shape)
    if not shape and not batching:
        return "has an empty reshape, which a model without batching cannot take"
    if any(d < 1 and d != -1 for d in shape):
        return f"has reshape {shape}: each dim must be >= 1, or -1"
    size, reshaped = _element_count(dims), _element_count(shape)
    if size != reshaped:  # an empty reshape holds one element
        return f"dims {dims} and reshape {shape} hold different numbers of elements"
    if size == -1 and _chunks(dims) != _chunks(shape):
        return f"dims {dims} and reshape {shape} do not split into the same variable parts"
    return None


def _check_tensors(model: RepoModel) -> list[Problem]:
    config = model.config
    problems = []
    if config.max_batch_size < 0:
        problems.append(
            Problem(
                model.name,
                "max_batch_size",
                f"is {config.max_batch_size}",
                hint="use 0 (no batching) or a positive maximum",
                rule="bad-max-batch-size",
            )
        )
    batching = config.max_batch_size > 0
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for io in tensors:
            if not io.name:
                problems.append(
                    Problem(model.name, kind, "has no name", hint="set name", rule="bad-tensor")
                )
                continue
            if io.name in seen:
                problems.append(
                    Problem(
                        model.name,
                        f"{kind} {io.name!r}",
                        f"is declared twice among the {kind}s",
                        hint="give each tensor its own name",
                        rule="duplicate-tensor",
                    )
                )
            seen.add(io.name)
            why = _tensor_problem(io, batching)
            if why:
                problems.append(
                    Problem(
                        model.name,
                        f"{kind} {io.name!r}",
                        why,
                        hint="see 'Inputs and Outputs' in Triton's model configuration docs",
                        rule="bad-tensor",
                    )
                )
    if config.HasField("dynamic_batching") and not model.is_ensemble:
        for size in config.dynamic_batching.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                problems.append(
                    Problem(
                        model.name,
                        "dynamic_batching",
                        f"preferred_batch_size {size} is not between 1 and max_batch_size "
                        f"({config.max_batch_size})",
                        hint="lower the preferred size or raise max_batch_size",
                        rule="bad-batching",
                    )
                )
    return problems


def _check_versions(model: RepoModel) -> list[Problem]:
    config = model.config
    problems = []
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        for version in policy.specific.versions:
            if version not in model.versions:
                problems.append(
                    Problem(
                        model.name,
                        "version_policy",
                        f"serves version {version}, but there is no folder {version}/",
                        hint=f"add the folder {version}/ with the model, or take the version "
                        "out of version_policy",
                        rule="missing-version",
                    )
                )
    if not model.served_versions() and not problems:
        present = sorted(model.versions)
        why = (
            f"its version_policy selects none of the folders {present}"
            if present
            else "it has no version folder"
        )
        problems.append(
            Problem(
                model.name,
                "versions",
                f"Triton would load no version: {why}",
                hint="add a folder named 1/ (empty for an ensemble) or fix version_policy",
                rule="no-versions",
            )
        )
    return problems


def _model_file(model: RepoModel) -> tuple[str, bool | None] | None:
    backend = effective_backend(model)
    expected = _MODEL_FILES.get((backend, model.config.platform)) or _MODEL_FILES.get((backend, ""))
    if expected is None:
        return None
    filename = model.config.default_model_filename or expected[0]
    return filename, expected[1] if filename == expected[0] else None


def model_file_name(model: RepoModel) -> str | None:
    """The file (or folder) each version folder of ``model`` must hold; None when the
    backend needs none we can name (ensembles, identity, custom backends)."""
    expected = None if model.is_ensemble else _model_file(model)
    return expected[0] if expected else None


def _check_files(model: RepoModel) -> list[Problem]:
    expected = _model_file(model)
    if expected is None or model.is_ensemble:
        return []
    filename, want_dir = expected
    problems = []
    for version, folder in sorted(model.versions.items()):
        path = os.path.join(folder, filename)
        try:
            info = os.stat(path)
        except OSError:
            info = None
        is_dir = info is not None and stat.S_ISDIR(info.st_mode)
        if info is None or (want_dir is True and not is_dir) or (want_dir is False and is_dir):
            kind = "folder" if want_dir else "file"
            problems.append(
                Problem(
                    model.name,
                    f"version {version}",
                    f"missing model file: {version}/{filename} is not there (backend "
                    f"{effective_backend(model)!r} needs a {kind} named {filename!r})",
                    hint=f"put the model at {model.name}/{version}/{filename}, or set "
                    "default_model_filename to the file's name",
                    rule="missing-model-file",
                )
            )
        elif os.path.islink(path) and not _inside(Path(path), model.path):
            problems.append(
                Problem(
                    model.name,
                    f"version {version}",
                    f"{version}/{filename} is a symbolic link out of the model folder",
                    hint="copy the file in instead of linking it",
                    rule="unsafe-link",
                )
            )
    return problems


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def check_model(model: RepoModel) -> list[Problem]:
    """The rules one model's folder must meet on its own (ensembles: see ``ensembles``)."""
    return [
        *_check_identity(model),
        *_check_tensors(model),
        *_check_versions(model),
        *_check_files(model),
    ]


def is_model_folder(path: Path) -> bool:
    """A folder that holds ``config.pbtxt`` itself: one model, not a repository of them."""
    return (Path(path) / CONFIG_FILENAME).is_file()


def read_repository_or_model(path: Path) -> Repository:
    """The repository at ``path``, or, when ``path`` is one model's folder, a repository that
    holds only that model (see ``reader.read_model_folder``). Raises ``NotFound`` when
    ``path`` is not a folder."""
    path = Path(path)
    if path.is_dir() and is_model_folder(path):
        return read_model_folder(path)
    return read_repository(path)


def errors(problems: list[Problem]) -> list[Problem]:
    """The problems that make Triton refuse the repository (warnings left out)."""
    return [p for p in problems if p.is_error]


def _empty(repo: Repository) -> Problem:
    return Problem(
        "",
        str(repo.root),
        "holds no model folder: Triton would start and serve nothing",
        hint="a repository holds one folder per model (NAME/config.pbtxt and version "
        "folders NAME/1/, ...); check that this is the folder you meant",
        rule="empty-repository",
        severity="warning",
    )


def validate_repository(root: Path) -> list[Problem]:
    """Every problem in the repository at ``root``; an empty list means Triton can load it,
    and a list of warnings only (``errors(...)`` empty) means it can load it but probably
    not as meant.

    ``root`` may also be one model's folder (it holds ``config.pbtxt``): that model is then
    checked as the only one of a repository, so an ensemble checked alone reports its step
    models as missing. An empty repository is a warning. Never raises for a problem inside
    the repository; raises ``NotFound`` when ``root`` is not a folder. Problems come grouped
    by model, in name order.
    """
    repo = read_repository_or_model(Path(root))
    problems: list[Problem] = list(repo.problems)
    if not repo.models and not repo.unreadable:
        problems.append(_empty(repo))
    for model in repo.models.values():
        problems.extend(check_model(model))
        if model.is_ensemble:
            problems.extend(check_ensemble(repo, model))
            problems.extend(check_decoupled_streams(repo, model))
    problems.extend(find_ensemble_cycles(repo))
    order = {name: i for i, name in enumerate(sorted({*repo.models, *repo.unreadable}))}
    problems.sort(key=lambda p: order.get(p.model, len(order)))  # stable within a model
    log.debug("validated %s: %d models, %d problems", root, len(repo.models), len(problems))
    return problems
