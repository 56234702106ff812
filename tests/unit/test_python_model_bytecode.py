"""A published Python-backend version folder stays as published when its model.py is imported.

Triton's stub imports ``<version>.model`` from the model's folder in an isolated interpreter
(``-I``: PYTHONDONTWRITEBYTECODE is ignored). Bytecode written into the version folder makes it
newer than what Triton loaded, and Triton loads the model again with the next ensemble that
uses it. These run that import the way the stub does, in a real ``python -I``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from manager.repository.python_model import BYTECODE_CACHE_BLOCKER, bytecode_cache_blocker

MODULE = "ANSWER = 42\n"


def _version_folder(root: Path, *, blocked: bool) -> Path:
    folder = root / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(MODULE)
    if blocked:
        for name, data in bytecode_cache_blocker().items():
            (folder / name).write_bytes(data)
    return folder


def _tree(folder: Path) -> dict[str, int]:
    """Every path under ``folder`` (itself included) and its modification time in ns."""
    paths = [folder, *sorted(folder.rglob("*"))]
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in paths}


def _import_like_the_stub(folder: Path) -> None:
    # the stub appends the model's folder to sys.path and imports "<version>.model"
    code = (
        f"import sys; sys.path.append({str(folder.parent)!r}); "
        "import importlib; assert importlib.import_module('1.model').ANSWER == 42"
    )
    subprocess.run([sys.executable, "-I", "-c", code], check=True, timeout=60)


def test_importing_model_py_leaves_a_blocked_version_folder_unchanged(tmp_path: Path) -> None:
    folder = _version_folder(tmp_path, blocked=True)
    before = _tree(folder)
    _import_like_the_stub(folder)
    assert _tree(folder) == before
    assert (folder / BYTECODE_CACHE_BLOCKER).is_file()


def test_without_the_blocker_the_import_writes_bytecode_into_the_folder(tmp_path: Path) -> None:
    """The control: what the blocker prevents does happen without it."""
    folder = _version_folder(tmp_path, blocked=False)
    before = _tree(folder)
    _import_like_the_stub(folder)
    assert list((folder / "__pycache__").glob("model.*.pyc"))
    assert _tree(folder) != before
