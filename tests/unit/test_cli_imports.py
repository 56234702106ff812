"""Every CLI call is a new process: what a client command imports is paid on each call.
Talking to the API needs the SDK, the settings and the state file, not the store, the
services or the system that `lastmile up` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("sqlalchemy", "sqlmodel", "manager.system", "manager.services", "manager.store",
         "tritonclient", "fastapi")  # fmt: skip

PROBE = """
import json, sys
import manager.cli
from manager.sdk import Lastmile
from manager.settings import Settings
client = Lastmile.from_settings(Settings(home=sys.argv[1]))
print(json.dumps(sorted(m for m in sys.modules if m.startswith({heavy!r}))))
"""


def test_a_client_command_imports_neither_the_store_nor_the_services(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(
        json.dumps({"api": {"url": "http://127.0.0.1:9"}, "gateway": {"http": "127.0.0.1:9"}})
    )
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(proc.stdout) == [], "imported on every CLI call: " + proc.stdout
