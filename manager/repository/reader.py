"""Reads any Triton model repository folder into parsed configs, without trusting it.

A repository handed to Lastmile (``lastmile repo validate`` / ``repo import``) may come from
anywhere: configs with typos, a missing version, a stray folder. Reading collects every such
problem as a ``Problem`` instead of stopping at the first, so one run tells the user all they
have to fix. Only an argument that is not a folder at all raises.

Triton's auto-complete is deliberately not imitated: a model folder without ``config.pbtxt``
is a problem, because what the server would guess is not what the user reviewed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from google.protobuf import text_format

from manager.errors import InvalidInput, NotFound
from manager.triton.client import ModelConfig, config_from_text

__all__ = [
    "CONFIG_FILENAME",
    "Problem",
    "RepoModel",
    "Repository",
    "Severity",
    "is_safe_model_name",
    "read_model_folder",
    "read_repository",
]

CONFIG_FILENAME = "config.pbtxt"
ENSEMBLE_PLATFORM = "ensemble"
MAX_CONFIG_BYTES = 4 << 20  # a hostile folder should not make us parse gigabytes

# Any name Triton accepts that is also harmless as a folder, a URL segment and a log line.
# Lastmile's own generated names (``manager.names``) are a stricter subset.
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def is_safe_model_name(name: str) -> bool:
    return bool(_SAFE_NAME_RE.fullmatch(name)) and ".." not in name


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing Triton would refuse (or silently get wrong), said so a person can fix it.

    ``model`` is the model (folder) it belongs to, empty for the repository as a whole;
    ``where`` narrows it down, e.g. ``"step 2 (model 'b'), input 'x'"`` (steps count from 1,
    in the order of the config); ``rule`` is a stable identifier for tools and tests
    (``"missing-model-file"``). ``severity`` is ``"error"`` for what Triton refuses and
    ``"warning"`` for what it accepts but is almost certainly not what the user meant (an
    empty repository): callers that gate on a clean repository look at errors only.
    """

    model: str
    where: str
    message: str
    hint: str = ""
    rule: str = ""
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        head = ": ".join(part for part in (self.model, self.where) if part)
        hint = f" ({self.hint})" if self.hint else ""
        return f"{prefix}{head + ': ' if head else ''}{self.message}{hint}"

    def to_dict(self) -> dict[str, str]:
        return {
            "model": self.model,
            "where": self.where,
            "message": self.message,
            "hint": self.hint,
            "rule": self.rule,
            "severity": self.severity,
        }


@dataclass
class RepoModel:
    """A model folder whose ``config.pbtxt`` parsed; ``versions``: version → its folder."""

    name: str
    config: ModelConfig
    versions: dict[int, Path]
    path: Path

    @property
    def is_ensemble(self) -> bool:
        return bool(self.config.platform == ENSEMBLE_PLATFORM)

    def served_versions(self) -> list[int]:
        """The versions Triton would load: version folders filtered by ``version_policy``."""
        present = sorted(self.versions)
        policy = self.config.version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return present
        if kind == "specific":
            wanted = set(policy.specific.versions)
            return [v for v in present if v in wanted]
        count = policy.latest.num_versions if kind == "latest" else 1
        return present[-count:] if count > 0 else []


@dataclass
class Repository:
    """What ``read_repository`` found: parsed models, problems met while reading, and the
    folders that look like models but could not be read (so that a step naming one is not
    reported as "not in the repository" a second time)."""

    root: Path
    models: dict[str, RepoModel] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unreadable: set[str] = field(default_factory=set)
    single_model: bool = False  # read by read_model_folder: the models next to it were not

    def model(self, name: str) -> RepoModel | None:
        return self.models.get(name)


def _escapes(path: Path, root: Path) -> bool:
    """True if a symbolic link at ``path`` points outside ``root`` (already resolved)."""
    try:
        path.resolve(strict=False).relative_to(root)
    except (ValueError, OSError, RuntimeError):
        return True
    return False


def _parse_error(exc: InvalidInput) -> str:
    cause: Any = exc.__cause__
    if isinstance(cause, text_format.ParseError):
        line, column = cause.GetLine(), cause.GetColumn()
        text = str(cause)
        # ParseError's text starts with "LINE:COLUMN : "; say it in words instead.
        text = re.sub(r"^\d+:\d+ : ", "", text)
        if line is not None and column is not None:
            return f"line {line}, column {column}: {text}"
        return text
    return exc.message


def _read_config(name: str, path: Path, repo: Repository) -> ModelConfig | None:
    try:
        if os.stat(path).st_size > MAX_CONFIG_BYTES:
            repo.problems.append(
                Problem(
                    name,
                    CONFIG_FILENAME,
                    f"is larger than {MAX_CONFIG_BYTES // (1 << 20)} MiB",
                    hint="a model config is a few kilobytes of text; check the file",
                    rule="unreadable-config",
                )
            )
            return None
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        repo.problems.append(
            Problem(
                name,
                CONFIG_FILENAME,
                "the model folder has no config.pbtxt",
                hint="write one (Lastmile does not guess configs the way Triton's "
                "auto-complete does), or remove the folder",
                rule="missing-config",
            )
        )
        return None
    except (OSError, UnicodeDecodeError) as exc:
        repo.problems.append(
            Problem(
                name,
                CONFIG_FILENAME,
                f"cannot be read: {exc}",
                hint="it must be a UTF-8 text file",
                rule="unreadable-config",
            )
        )
        return None
    try:
        return config_from_text(text, where=str(path))
    except InvalidInput as exc:
        repo.problems.append(
            Problem(
                name,
                CONFIG_FILENAME,
                f"does not parse as a Triton ModelConfig: {_parse_error(exc)}",
                hint="check the field name and syntax against Triton's model_config.proto",
                rule="config-syntax",
            )
        )
        return None


def _read_versions(name: str, folder: Path, root: Path, repo: Repository) -> dict[int, Path]:
    versions: dict[int, Path] = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        repo.problems.append(
            Problem(
                name,
                "",
                f"the model folder cannot be listed: {exc.strerror}",
                hint="check its permissions",
                rule="unreadable-folder",
            )
        )
        return versions
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue  # config.pbtxt, labels, READMEs: files next to versions are fine
        if entry.is_symlink() and _escapes(Path(entry.path), root):
            repo.problems.append(
                Problem(
                    name,
                    f"folder {entry.name!r}",
                    "is a symbolic link that points outside the repository",
                    hint="copy the files in instead of linking them",
                    rule="unsafe-link",
                )
            )
            continue
        if not _VERSION_RE.fullmatch(entry.name):
            repo.problems.append(
                Problem(
                    name,
                    f"folder {entry.name!r}",
                    "is not a version folder (Triton ignores it)",
                    hint="version folders are named 1, 2, 3, ...; move other files "
                    "into a version folder or next to config.pbtxt",
                    rule="bad-version-folder",
                )
            )
            continue
        version = int(entry.name)
        if version < 1:
            repo.problems.append(
                Problem(
                    name,
                    f"folder {entry.name!r}",
                    "version 0 is not a valid version",
                    hint="versions start at 1: rename the folder",
                    rule="bad-version-folder",
                )
            )
            continue
        versions[version] = Path(entry.path)
    return versions


def read_repository(root: Path) -> Repository:
    """Parse every model folder under ``root``; problems are collected, not raised.

    Raises ``NotFound`` only when ``root`` itself is not a folder. Names starting with '.'
    (the writer's ``.staging`` and ``.lock``) and plain files at the top are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFound(
            f"model repository {str(root)!r} is not a folder",
            hint="pass the folder that holds one sub-folder per model",
        )
    repo = Repository(root=root)
    resolved_root = root.resolve()
    with os.scandir(root) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        _read_model(repo, entry.name, Path(entry.path), entry.is_symlink(), resolved_root)
    return repo


def read_model_folder(folder: Path) -> Repository:
    """Parse one model folder (one that holds ``config.pbtxt``) as a repository of only it.

    Someone who runs ``repo validate`` on a model folder wants that model checked, not its
    version folders read as models. The models next to it are deliberately not read: an
    ensemble checked this way reports its steps' models as missing, because they are not
    part of what was asked to be checked (``Repository.single_model`` lets messages say so).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(
            f"model folder {str(folder)!r} is not a folder",
            hint="pass a model folder (it holds config.pbtxt) or a repository folder",
        )
    resolved = folder.resolve()
    repo = Repository(root=resolved.parent, single_model=True)
    # The folder itself was named by the user, so it is not checked as a link out of the
    # repository; its version folders still are, against the folder that holds it.
    _read_model(repo, resolved.name, resolved, False, resolved.parent)
    return repo


def _read_model(
    repo: Repository, name: str, folder: Path, is_link: bool, resolved_root: Path
) -> None:
    if is_link and _escapes(folder, resolved_root):
        repo.problems.append(
            Problem(
                name,
                "",
                "the model folder is a symbolic link that points outside the repository",
                hint="copy the model in instead of linking it",
                rule="unsafe-link",
            )
        )
        repo.unreadable.add(name)
        return
    if not is_safe_model_name(name):
        repo.problems.append(
            Problem(
                name,
                "",
                f"{name!r} is not a safe model name",
                hint="use letters, digits, '_', '.' or '-' (at most 128, no '..'), "
                "starting with a letter, digit or '_'",
                rule="unsafe-name",
            )
        )
    config = _read_config(name, folder / CONFIG_FILENAME, repo)
    versions = _read_versions(name, folder, resolved_root, repo)
    if config is None:
        repo.unreadable.add(name)
        return
    repo.models[name] = RepoModel(name=name, config=config, versions=versions, path=folder)
