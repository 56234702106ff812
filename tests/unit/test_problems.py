"""Problem documents never carry the server's paths."""

from __future__ import annotations

import sys
from pathlib import Path

from manager.api.problems import redactor


def test_server_paths_are_redacted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    redact = redactor(home)
    message = (
        f"failed to load {home.resolve()}/repository/default.m/2/model.py "
        f"from {sys.prefix}/lib/python3/site-packages/x.py"
    )
    out = redact(message)
    assert str(tmp_path) not in out and sys.prefix not in out
    assert "$LASTMILE_HOME/repository/default.m/2/model.py" in out
    assert "<python>/lib/python3/site-packages/x.py" in out
    assert redact("nothing to hide") == "nothing to hide"
