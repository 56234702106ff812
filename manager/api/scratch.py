"""A private folder under LASTMILE_HOME/run for one request, removed whatever happens."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from manager.settings import Settings


@contextmanager
def scratch(settings: Settings, purpose: str) -> Iterator[Path]:
    settings.ensure_dirs()
    work = Path(tempfile.mkdtemp(dir=settings.run_dir, prefix=f".{purpose}-"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
