"""Finding and stopping what a killed `lastmile up` left behind, with real processes: a process
group is stopped whole (the leader and what it started), only when one of its members is ours,
and also when its leader is already gone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.private_files import secure_tree
from manager.procs import ChildRegistry, group_members, reap_orphans, terminate_group

# A leader that starts a grandchild in its own group, then sleeps; both argvs end with the
# marker given (what the command lines of tritonserver and its stubs contain).
LEADER = (
    "import subprocess, sys, time;"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', sys.argv[1]]);"
    "time.sleep(120)"
)


def _spawn(marker: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", LEADER, marker], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group_members(proc.pid)) < 2:  # the grandchild is up
        assert time.monotonic() < deadline, "the grandchild did not start"
        time.sleep(0.02)
    return proc


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_orphans_are_stopped_whole_and_strangers_left_alone(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    ours = _spawn("tritonserver")
    stranger = _spawn("someone-else")
    groups += [ours, stranger]
    registry = ChildRegistry(tmp_path)
    registry.add("triton", ours.pid)
    registry.add("gateway", stranger.pid)  # a recycled pid: its group holds nothing of ours

    reaped = reap_orphans(tmp_path)

    assert reaped == [{"role": "triton", "pgid": ours.pid}]
    assert group_members(ours.pid) == []
    assert ours.wait(timeout=10) == -9
    assert len(group_members(stranger.pid)) == 2
    assert not (tmp_path / "children.json").exists()


def test_a_group_whose_leader_died_is_still_stopped(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    leader = _spawn("tritonserver")
    groups.append(leader)
    os.kill(leader.pid, 9)
    leader.wait(timeout=10)
    assert len(group_members(leader.pid)) == 1  # the grandchild lives on, as stubs do
    terminate_group(leader.pid, timeout_s=0)
    assert group_members(leader.pid) == []


def test_reap_leaves_a_running_predecessor_alone(tmp_path: Path) -> None:
    """While the process that recorded the children runs, nothing is touched."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "children.json").write_text(
            f'{{"main": {parent.pid}, "children": {{"triton": {{"pid": 1, "pgid": 1}}}}}}'
        )
        assert reap_orphans(tmp_path) == []
        assert (tmp_path / "children.json").exists()
    finally:
        parent.kill()
        parent.wait()


def test_secure_tree_makes_the_home_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True, mode=0o755)
    (home / "models" / "m.onnx").write_bytes(b"x")
    (home / "models" / "m.onnx").chmod(0o644)
    (home / "stub").write_bytes(b"#!/bin/sh\n")
    (home / "stub").chmod(0o755)
    secure_tree(home)
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "models").stat().st_mode & 0o777 == 0o700
    assert (home / "models" / "m.onnx").stat().st_mode & 0o777 == 0o600
    assert (home / "stub").stat().st_mode & 0o777 == 0o700
