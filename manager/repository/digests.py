"""Content hashes of repository files: what "the same version" means, and a cache so that
checking a repository again (reconciliation on a timer) does not read every model file again.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

__all__ = ["DigestCache", "sha256_bytes", "sha256_file", "tree_digest"]

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DigestCache:
    """sha256 of files already hashed, keyed by what changes whenever a file's bytes do
    (device, inode, size, mtime and ctime in ns; ctime cannot be set back by a user), so that
    checking a repository again does not read every model file again. Bounded: the oldest
    entries go first.

    File times tick coarsely (a jiffy), so a file changed within ``settle_s`` of being hashed
    could keep its key: such a recently changed file is not remembered (git's "racy clean").
    """

    def __init__(self, max_entries: int = 4096, *, settle_s: float = 2.0) -> None:
        self.max_entries = max_entries
        self.settle_ns = int(settle_s * 1e9)
        self._known: dict[tuple[int, ...], str] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        digest = sha256_file(path)
        if time.time_ns() - st.st_ctime_ns < self.settle_ns or (
            path.stat().st_ctime_ns != st.st_ctime_ns  # changed while we read it
        ):
            return digest
        with self._lock:
            while len(self._known) >= self.max_entries:
                self._known.pop(next(iter(self._known)))
            self._known[key] = digest
        return digest


def tree_digest(folder: Path, cache: DigestCache | None = None) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``: what "same version" means.

    Bytecode caches that Triton's Python backend may leave next to ``model.py`` are not part
    of a version's content.
    """
    hash_file = cache.sha256 if cache is not None else sha256_file
    return {
        path.relative_to(folder).as_posix(): hash_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.relative_to(folder).parts
    }
