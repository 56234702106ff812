"""The running system's state file (``run/state.json``): where its API, gateway and Triton
servers listen. Clients read it to find a local system, so this module stays light (no store,
no services): every CLI call imports it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from manager.settings import Settings

STATE_FILE = "state.json"


def state_path(settings: Settings) -> Path:
    return settings.run_dir / STATE_FILE


def read_state(settings: Settings) -> dict[str, Any] | None:
    try:
        return dict(json.loads(state_path(settings).read_text()))
    except (OSError, ValueError):
        return None
