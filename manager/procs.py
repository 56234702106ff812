"""Processes ``lastmile up`` starts, and finding them again after its own death.

Each child (tritonserver, the gateway) is started in a session of its own, so its process
group holds it and everything it starts (Triton's Python-backend stubs). A record of those
groups is kept in ``LASTMILE_HOME/run/children.json`` from the moment each child starts, so a
later ``lastmile up`` whose predecessor was killed (SIGKILL, OOM, power cut) can find and stop
the orphans that still hold ports and files, instead of failing on busy ports. A group is only
signalled while one of its members still looks like ours (command line markers), so a recycled
process id never makes us kill a stranger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from manager.private_files import write_private

log = logging.getLogger(__name__)

CHILDREN_FILE = "children.json"
# What our children's command lines contain (tritonserver, its stubs, the gateway module).
MARKERS = ("tritonserver", "triton_python_backend_stub", "rollout.gateway")


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def started(pid: int) -> int | None:
    """When a process started (clock ticks after boot, /proc/PID/stat field 22): with its pid,
    it names one process, never a later one that got the same pid. None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def group_members(pgid: int) -> list[int]:
    """Processes of a process group that still hold resources: a zombie whose threads have
    all exited has closed its files and sockets; a zombie leader whose other threads are
    still exiting has not (the files are released with the last thread)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat and stat[1] == pgid and (stat[0] != "Z" or _threads(pid) > 1):
            members.append(pid)
    return members


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def ours(pid: int, markers: tuple[str, ...] = MARKERS) -> bool:
    cmd = _cmdline(pid)
    return any(marker in cmd for marker in markers)


def kill_group(pgid: int, *, timeout_s: float = 10.0, markers: tuple[str, ...] = MARKERS) -> bool:
    """SIGKILL a process group if one of its members is ours; wait until it is empty.
    True when something was killed."""
    if not any(ours(pid, markers) for pid in group_members(pgid)):
        return False
    _sigkill_and_wait(pgid, timeout_s)
    return True


def _sigkill_and_wait(pgid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def terminate_group(pgid: int, *, timeout_s: float) -> None:
    """SIGTERM a group, SIGKILL what is left after ``timeout_s`` (at once when 0); works when
    the group's leader is already dead (its stubs may not be)."""
    if not group_members(pgid):
        return
    if timeout_s > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not group_members(pgid):
            return
        log.warning("process group %d did not stop in %.0f s; killing it", pgid, timeout_s)
    _sigkill_and_wait(pgid, 5.0)


class ChildRegistry:
    """The record of our children's process groups, rewritten whenever one starts."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / CHILDREN_FILE
        self._children: dict[str, dict[str, Any]] = {}

    def add(self, role: str, pid: int) -> None:
        self._children[role] = {"pid": pid, "pgid": os.getpgid(pid)}
        self._write()

    def remove(self, role: str) -> None:
        if self._children.pop(role, None) is not None:
            self._write()

    def _write(self) -> None:
        body = {"main": os.getpid(), "children": self._children}
        write_private(self.path, json.dumps(body, indent=2).encode())

    def clear(self) -> None:
        self._children.clear()
        self.path.unlink(missing_ok=True)


def reap_orphans(run_dir: Path) -> list[dict[str, Any]]:
    """Stop the children a dead ``lastmile up`` left behind. Nothing happens while the
    process that recorded them still runs."""
    path = run_dir / CHILDREN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    main = record.get("main")
    if isinstance(main, int) and main != os.getpid() and _alive(main):
        return []
    reaped = []
    for role, child in (record.get("children") or {}).items():
        pgid = child.get("pgid")
        if isinstance(pgid, int) and pgid > 1 and kill_group(pgid):
            log.warning("stopped %s left behind by a previous run (process group %d)", role, pgid)
            reaped.append({"role": role, "pgid": pgid})
    path.unlink(missing_ok=True)
    return reaped


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and (stat[0] != "Z" or _threads(pid) > 1)
