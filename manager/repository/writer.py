"""Publishes models into a Triton model repository so that Triton never sees half a model.

A deploy that fails must leave the serving version untouched (DESIGN §5). Everything is first
written under ``<root>/.staging/<uuid>/`` and fsynced, then moved into place with renames on
the same filesystem: a new model folder in one rename, or new version folders one by one and
``config.pbtxt`` last (so the config never names a version that is not there yet). Versions
are immutable: re-publishing identical content is a no-op, different content is a conflict.
A process lock (``<root>/.lock``) serialises writers sharing a repository.

Repair: ``write_model(..., repair=True)`` replaces a published version whose files differ
from the staged ones (a deleted or truncated file) instead of refusing; the caller vouches
that the staged files are the truth (the content-addressed store), and ``expected_sha256``
makes the writer check that before anything moves. The damaged folder is moved aside and the
staged one renamed in, under the repository lock. Staging folders are flocked while in use, so
that ``leftovers()`` / ``remove_leftovers()`` find only what a killed writer left behind.

Publishing many models at once (an import, a benchmark) goes through ``batch()``: the same
staging and renames, but one ``syncfs`` of the staged tree replaces an fsync per file and per
folder, which is what made a thousand models take seconds. Every model still appears in one
rename, only after all of its bytes are durable.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manager.errors import Conflict, InvalidInput, LastmileError, NotFound
from manager.repository.config import MODEL_FILENAME, check_triton_name
from manager.repository.digests import (
    DigestCache,
    sha256_bytes,
    sha256_file,
    tree_digest,
)
from manager.triton.client import ModelConfig, config_from_text, config_to_text

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILENAME",
    "DigestCache",
    "RepositoryBatch",
    "RepositoryWriter",
    "sha256_bytes",
    "sha256_file",
    "tree_digest",
]

CONFIG_FILENAME = "config.pbtxt"
STAGING_DIRNAME = ".staging"
LOCK_FILENAME = ".lock"
PLACEHOLDER_FILENAME = ".keep"
_FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_CHUNK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc: Any = None


def _sync_filesystem(path: Path) -> None:
    """Make everything written on ``path``'s filesystem durable: one call for a whole batch.

    Linux ``syncfs``; elsewhere ``sync`` (all filesystems, slower but just as safe).
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    syncfs = getattr(_libc, "syncfs", None) if _libc else None
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes, *, sync: bool = True) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())


def _copy_file(source: Path, target: Path, *, sync: bool = True) -> None:
    try:
        reader = open(source, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError as exc:
        raise NotFound(
            f"model file {str(source)!r} does not exist", hint="import the model again"
        ) from exc
    with reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, _CHUNK)
        if sync:
            writer.flush()
            os.fsync(writer.fileno())


def _check_file_name(name: str) -> str:
    if not isinstance(name, str) or not _FILE_RE.fullmatch(name) or name == CONFIG_FILENAME:
        raise InvalidInput(
            f"invalid file name {name!r} for a model version folder",
            hint="use letters, digits, '_', '.' or '-', no folders",
        )
    return name


def _check_version(version: int) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInput(f"invalid model version {version!r}", hint="versions are integers >= 1")
    return version


@dataclass
class _Staged:
    """A model checked and ready to be written into a staging folder."""

    name: str
    config: ModelConfig
    versions: list[int]
    config_bytes: bytes
    files: dict[int, tuple[str, Path]] = field(default_factory=dict)  # version → (name, source)
    extras: dict[int, dict[str, bytes]] = field(default_factory=dict)
    expected: dict[int, str] = field(default_factory=dict)  # version → sha256 of its model file


class RepositoryWriter:
    """The one writer of a Triton model repository folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- helpers ----------------------------------------------------------------------------
    def _model_dir(self, triton_name: str) -> Path:
        return self.root / check_triton_name(triton_name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILENAME, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _staging(self, *, locked: bool = True) -> Iterator[Path]:
        """A fresh staging folder, flocked (shared) while in use so that a clean-up never
        takes it for a leftover. It is made under the repository lock (``locked``: the caller
        already holds it), which is what ``leftovers()`` holds while it looks."""
        staging_root = self.root / STAGING_DIRNAME
        staging = staging_root / uuid.uuid4().hex
        with contextlib.ExitStack() as hold:
            if not locked:
                hold.enter_context(self._locked())
            staging.mkdir(parents=True)
            fd = os.open(staging, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            os.close(fd)
            with contextlib.suppress(OSError):  # other writers' folders may still be there
                staging_root.rmdir()

    def _config_bytes(self, triton_name: str, config: ModelConfig) -> bytes:
        if config.name and config.name != triton_name:
            raise InvalidInput(
                f"config names model {config.name!r} but is published as {triton_name!r}",
                hint="Triton requires the config name to match its folder",
            )
        if not isinstance(config, ModelConfig):
            raise InvalidInput(f"the config of {triton_name!r} is not a Triton ModelConfig")
        # A ModelConfig message always prints as text its schema parses back, so the text is
        # not parsed again (that re-parse cost a third of a batched write).
        return config_to_text(config).encode("utf-8")

    def _check_policy(self, triton_name: str, config: ModelConfig, versions: list[int]) -> None:
        """A config naming a version with no folder would make Triton fail the whole load."""
        final = self._model_dir(triton_name)
        for version in config.version_policy.specific.versions:
            if version not in versions and not (final / str(version)).is_dir():
                raise InvalidInput(
                    f"the config of {triton_name!r} serves version {version}, which is "
                    "neither given nor published",
                    hint="pass its model file too, or leave it out of the config",
                )

    @staticmethod
    def _damaged_source(item: _Staged, version: int, actual: str) -> LastmileError:
        _filename, source = item.files[version]
        return LastmileError(
            f"the stored file of version {version} of {item.name!r} ({source}) is damaged: "
            f"its sha256 is {actual}, its content address {item.expected[version]}",
            hint="restore that file from a backup, or import the model again as a new "
            "version and deploy that",
        )

    def _plan(
        self, item: _Staged, staged: Path, *, repair: bool = False
    ) -> tuple[list[int] | None, list[int]]:
        """Check a staged model against what is published; changes nothing.

        Returns (added, replaced): added is None when the model is new (its folder moves in
        one rename), else the versions to add; replaced, the published versions whose files
        differ and are to be replaced (only with ``repair``; otherwise that is a conflict).
        A staged model file whose sha256 is not the one the caller expects (a damaged stored
        file) is never published: that is an error, unless the published copy of that version
        is intact, which then stays.
        """
        final = self._model_dir(item.name)
        is_new = not final.exists()
        added, replaced = [], []
        for version in item.versions:
            target = final / str(version)
            absent = is_new or (not target.exists() and not target.is_symlink())
            staged_digest = (
                tree_digest(staged / str(version))
                if version in item.expected or not absent
                else None
            )
            bad_source = None
            if version in item.expected and staged_digest is not None:
                actual = staged_digest.get(item.files[version][0], "")
                if actual != item.expected[version]:
                    bad_source = actual or "(no file)"
            if absent:
                if bad_source is not None:
                    raise self._damaged_source(item, version, bad_source)
                added.append(version)
                continue
            published = tree_digest(target) if target.is_dir() and not target.is_symlink() else None
            if bad_source is not None:
                filename = item.files[version][0]
                if published is None or published.get(filename) != item.expected[version]:
                    raise self._damaged_source(item, version, bad_source)
                log.warning(
                    "the stored file of version %d of %s is damaged; its published copy is "
                    "intact and stays",
                    version,
                    item.name,
                )
                continue
            if published != staged_digest:
                if not repair:
                    raise Conflict(
                        f"version {version} of model {item.name!r} is already published "
                        "with different files",
                        hint="versions are immutable: register the change as a new version",
                    )
                replaced.append(version)
        return (None if is_new else added), replaced

    def _move(
        self,
        triton_name: str,
        staged: Path,
        added: list[int] | None,
        replaced: list[int] | tuple[int, ...] = (),
    ) -> Path:
        """Rename a staged model into place; return the folder whose entries changed.

        A replaced version's damaged folder is first moved aside into the staging folder
        (deleted with it), then the staged one renamed in.
        """
        final = self._model_dir(triton_name)
        if added is None:
            os.rename(staged, final)
            return self.root
        moved: list[Path] = []
        aside: list[tuple[Path, Path]] = []  # (where it was, where it went)
        try:
            for version in replaced:
                old = staged / f".replaced-{version}"
                os.rename(final / str(version), old)
                aside.append((final / str(version), old))
                os.rename(staged / str(version), final / str(version))
                moved.append(final / str(version))
            for version in added:
                os.rename(staged / str(version), final / str(version))
                moved.append(final / str(version))
            os.replace(staged / CONFIG_FILENAME, final / CONFIG_FILENAME)
        except BaseException:
            for path in moved:  # put the repository back as it was
                with contextlib.suppress(OSError):
                    os.rename(path, staged / path.name)
            for was, now in aside:
                with contextlib.suppress(OSError):
                    os.rename(now, was)
            raise
        return final

    def _prepare_model(
        self,
        triton_name: str,
        config: ModelConfig,
        version_files: Mapping[int, Path],
        extra_files: Mapping[int, Mapping[str, bytes]] | None,
        model_filename: str | None,
        expected_sha256: Mapping[int, str] | None = None,
    ) -> _Staged:
        check_triton_name(triton_name)
        if not version_files:
            raise InvalidInput(f"no model versions given for {triton_name!r}")
        versions = sorted(_check_version(v) for v in version_files)
        filename = _check_file_name(
            model_filename or config.default_model_filename or MODEL_FILENAME
        )
        extras = {v: dict(files) for v, files in (extra_files or {}).items()}
        for version, files in extras.items():
            if version not in version_files:
                raise InvalidInput(f"extra files given for version {version}, which has no model")
            for name in files:
                if _check_file_name(name) == filename:
                    raise InvalidInput(f"extra file {name!r} would replace the model file")
        return _Staged(
            triton_name,
            config,
            versions,
            self._config_bytes(triton_name, config),
            files={v: (filename, Path(version_files[v])) for v in versions},
            extras=extras,
            expected={v: sha for v, sha in (expected_sha256 or {}).items() if v in version_files},
        )

    def _prepare_ensemble(self, triton_name: str, config: ModelConfig) -> _Staged:
        check_triton_name(triton_name)
        if config.platform != "ensemble":
            raise InvalidInput(f"config of {triton_name!r} is not an ensemble")
        versions = [_check_version(v) for v in config.version_policy.specific.versions] or [1]
        return _Staged(triton_name, config, versions, self._config_bytes(triton_name, config))

    @staticmethod
    def _stage(staging: Path, item: _Staged, *, sync: bool) -> Path:
        staged = staging / item.name
        staged.mkdir()
        for version in item.versions:
            folder = staged / str(version)
            folder.mkdir()
            if version in item.files:
                filename, source = item.files[version]
                _copy_file(source, folder / filename, sync=sync)
            for name, data in item.extras.get(version, {}).items():
                _write_bytes(folder / name, data, sync=sync)
            if sync:
                _fsync_dir(folder)
        _write_bytes(staged / CONFIG_FILENAME, item.config_bytes, sync=sync)
        if sync:
            _fsync_dir(staged)
        return staged

    def _publish_one(self, item: _Staged, staging: Path, *, repair: bool = False) -> list[int]:
        """Publish a staged model; return the versions added or (with repair) replaced."""
        staged = staging / item.name
        added, replaced = self._plan(item, staged, repair=repair)
        _fsync_dir(self._move(item.name, staged, added, replaced))
        if replaced:
            log.warning("repaired %s: replaced damaged versions %s", item.name, replaced)
        return item.versions if added is None else sorted(added + replaced)

    # -- public API -------------------------------------------------------------------------
    def write_model(
        self,
        triton_name: str,
        config: ModelConfig,
        version_files: Mapping[int, Path],
        extra_files: Mapping[int, Mapping[str, bytes]] | None = None,
        *,
        model_filename: str | None = None,
        repair: bool = False,
        expected_sha256: Mapping[int, str] | None = None,
    ) -> list[int]:
        """Publish ``config`` and one model file per version; return the versions added
        (with ``repair``, also those replaced).

        ``version_files[v]`` is copied to ``<v>/<model_filename>`` (default: the config's
        ``default_model_filename`` or ``model.onnx``); ``extra_files[v]`` adds files such as
        the Python backend's ``model.py``. ``expected_sha256[v]``: the sha256 the copied model
        file must have (its content address), checked before anything is published.
        ``repair``: a published version whose files differ is replaced by the given files
        instead of being a conflict.
        """
        item = self._prepare_model(
            triton_name, config, version_files, extra_files, model_filename, expected_sha256
        )
        with self._locked(), self._staging() as staging:
            self._check_policy(triton_name, config, item.versions)
            self._stage(staging, item, sync=True)
            added = self._publish_one(item, staging, repair=repair)
        log.info("published %s versions %s (new: %s)", triton_name, item.versions, added)
        return added

    def write_ensemble(
        self, triton_name: str, config: ModelConfig, *, repair: bool = False
    ) -> None:
        """Publish an ensemble: its config and the empty version folder Triton requires."""
        item = self._prepare_ensemble(triton_name, config)
        with self._locked(), self._staging() as staging:
            self._stage(staging, item, sync=True)
            self._publish_one(item, staging, repair=repair)
        log.info("published ensemble %s", triton_name)

    @staticmethod
    def model_file_name(config: ModelConfig, model_filename: str | None = None) -> str:
        """The file name ``write_model`` gives a version's model file under this config."""
        return _check_file_name(model_filename or config.default_model_filename or MODEL_FILENAME)

    def config_text(self, triton_name: str, config: ModelConfig) -> bytes:
        """``config.pbtxt`` exactly as ``write_model`` / ``write_ensemble`` would write it."""
        return self._config_bytes(check_triton_name(triton_name), config)

    def entries(self) -> list[str]:
        """Every name at the top of the repository, published or not (hidden ones left out)."""
        if not self.root.is_dir():
            return []
        return sorted(child.name for child in self.root.iterdir() if not child.name.startswith("."))

    def _unused_staging(self) -> Iterator[tuple[Path, int]]:
        """Staging folders nobody holds (a killed writer's), each yielded while flocked
        exclusively by us; the caller holds the repository lock."""
        staging_root = self.root / STAGING_DIRNAME
        if not staging_root.is_dir():
            return
        for child in sorted(staging_root.iterdir()):
            try:
                fd = os.open(child, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # a symlink or something we cannot open: not ours to keep
                yield child, -1
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # a writer is using it
                continue
            try:
                yield child, fd
            finally:
                os.close(fd)

    def leftovers(self) -> list[str]:
        """Staging folders that a killed or crashed writer left (``.staging/<id>``)."""
        with self._locked():
            return [path.relative_to(self.root).as_posix() for path, _fd in self._unused_staging()]

    def remove_leftovers(self) -> list[str]:
        """Delete what ``leftovers()`` lists; return what was removed."""
        removed: list[str] = []
        with self._locked():
            for path, _fd in self._unused_staging():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path.relative_to(self.root).as_posix())
            with contextlib.suppress(OSError):
                (self.root / STAGING_DIRNAME).rmdir()
        if removed:
            log.warning("removed staging leftovers from the repository: %s", removed)
        return removed

    @contextlib.contextmanager
    def batch(self) -> Iterator[RepositoryBatch]:
        """Stage many models and ensembles, then publish them all when the block ends.

        Each model still appears in one rename after its bytes are durable, but the whole
        batch costs one filesystem sync instead of an fsync per file. Every conflict is
        checked before the first rename; if the block raises, nothing is published. Models
        are published in the order they were added (step models before their ensembles).
        """
        with self._staging(locked=False) as staging:
            batch = RepositoryBatch(self, staging)
            yield batch
            batch._commit()

    def read_config(self, triton_name: str) -> ModelConfig:
        path = self._model_dir(triton_name) / CONFIG_FILENAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise NotFound(f"model {triton_name!r} is not in the repository") from exc
        return config_from_text(text, where=str(path))

    def remove_model(self, triton_name: str) -> bool:
        """Take a model folder out in one rename, then delete it; False if it was not there."""
        final = self._model_dir(triton_name)
        with self._locked():
            if not final.exists():
                return False
            with self._staging() as staging:
                os.rename(final, staging / triton_name)
                _fsync_dir(self.root)
        log.info("removed %s from the repository", triton_name)
        return True

    def version_folders(self, triton_name: str) -> dict[int, Path]:
        """The numbered version folders of a model as they are on disk (none if absent)."""
        final = self._model_dir(triton_name)
        if not final.is_dir():
            return {}
        return {
            int(child.name): child
            for child in sorted(final.iterdir())
            if child.is_dir() and child.name.isdigit()
        }

    def remove_versions(self, triton_name: str, keep: set[int] | frozenset[int]) -> list[int]:
        """Delete version folders not in ``keep`` (after the config stopped naming them)."""
        final = self._model_dir(triton_name)
        removed: list[int] = []
        with self._locked():
            if not final.is_dir():
                return removed
            config = self.read_config(triton_name)
            listed = set(config.version_policy.specific.versions)
            for version, child in self.version_folders(triton_name).items():
                if version not in keep:
                    if version in listed:
                        raise Conflict(
                            f"version {version} of {triton_name!r} is still in its config",
                            hint="publish a config without it first",
                        )
                    with self._staging() as staging:
                        os.rename(child, staging / child.name)
                    removed.append(version)
        return sorted(removed)

    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            child.name
            for child in self.root.iterdir()
            if not child.name.startswith(".")
            and child.is_dir()
            and (child / CONFIG_FILENAME).is_file()
        )

    def files_for_push(self, triton_name: str) -> dict[str, bytes]:
        """``"<version>/<file>"`` → bytes, for Triton's load API (``file:`` overrides).

        Empty version folders (ensembles) are sent as ``<version>/.keep``: checked against
        tritonserver 2.51, which refuses a pushed ensemble without any file.
        """
        final = self._model_dir(triton_name)
        if not (final / CONFIG_FILENAME).is_file():
            raise NotFound(f"model {triton_name!r} is not in the repository")
        files: dict[str, bytes] = {}
        for folder in self.version_folders(triton_name).values():
            contents = [p for p in sorted(folder.rglob("*")) if p.is_file()]
            for path in contents:
                files[path.relative_to(final).as_posix()] = path.read_bytes()
            if not contents:
                # Triton only creates a version folder it receives a file for; an
                # ensemble pushed with no files fails to load ("failed to poll").
                files[f"{folder.name}/{PLACEHOLDER_FILENAME}"] = b""
        return files


class RepositoryBatch:
    """Models staged by ``RepositoryWriter.batch()``; published when its block ends."""

    def __init__(self, writer: RepositoryWriter, staging: Path) -> None:
        self._writer = writer
        self._staging = staging
        self._items: list[_Staged] = []
        self._names: set[str] = set()
        self.added: dict[str, list[int]] = {}
        """After the block: model → versions it added (all of them for a new model)."""

    def _add(self, item: _Staged) -> None:
        if item.name in self._names:
            raise InvalidInput(f"model {item.name!r} is added to the batch twice")
        self._writer._stage(self._staging, item, sync=False)
        self._items.append(item)
        self._names.add(item.name)

    def write_model(
        self,
        triton_name: str,
        config: ModelConfig,
        version_files: Mapping[int, Path],
        extra_files: Mapping[int, Mapping[str, bytes]] | None = None,
        *,
        model_filename: str | None = None,
    ) -> None:
        """Like ``RepositoryWriter.write_model``, published when the batch ends."""
        self._add(
            self._writer._prepare_model(
                triton_name, config, version_files, extra_files, model_filename
            )
        )

    def write_ensemble(self, triton_name: str, config: ModelConfig) -> None:
        self._add(self._writer._prepare_ensemble(triton_name, config))

    def _commit(self) -> None:
        writer = self._writer
        if not self._items:
            return
        _sync_filesystem(self._staging)  # every staged byte is durable before any rename
        with writer._locked():
            plans = []
            for item in self._items:
                if item.config.platform != "ensemble":
                    writer._check_policy(item.name, item.config, item.versions)
                plans.append(writer._plan(item, self._staging / item.name)[0])
            changed: set[Path] = set()
            for item, added in zip(self._items, plans, strict=True):
                changed.add(writer._move(item.name, self._staging / item.name, added))
                self.added[item.name] = item.versions if added is None else added
            for folder in changed:
                _fsync_dir(folder)
        log.info("published a batch of %d models", len(self._items))
