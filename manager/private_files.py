"""Files under ``LASTMILE_HOME`` are one user's: the store, models, keys and logs. Secrets
and state are written 0600 from their first byte, atomically (stage, fsync, rename)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` readable by its owner only, atomically: a reader sees the
    old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # an existing tmp of ours keeps its old mode through O_CREAT
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte)."""
    write_private(path, (text + "\n").encode())


def secure_tree(root: Path) -> None:
    """Folders 0700, files 0600 (0700 when executable) under ``root``: the home holds the
    store, models, keys and logs of one user."""
    if not root.exists():
        return
    root.chmod(0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o700, follow_symlinks=False)
        for name in filenames:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if not os.path.islink(path):
                    os.chmod(path, 0o700 if st.st_mode & 0o100 else 0o600)
