"""Whether a system runs for a home, from its state file (manager.supervisor.running_state):
a file left by a process that is gone is stale, also when its pid was given to another process
since — our own (a container restarted on the same volume is pid 1 again), or a later one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.errors import Conflict
from manager.procs import started
from manager.state_file import state_path
from manager.supervisor import check_can_start, running_state
from tests.conftest import make_settings


@pytest.fixture
def other() -> Iterator[int]:
    """A live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _write(home: Path, **state: object) -> None:
    settings = make_settings(home)
    settings.ensure_dirs()
    state_path(settings).write_text(json.dumps(state))


def test_a_system_that_runs_is_found_and_refuses_a_second(tmp_path: Path, other: int) -> None:
    settings = make_settings(tmp_path)
    _write(tmp_path, pid=other, pid_started=started(other))
    assert running_state(settings) is not None
    with pytest.raises(Conflict, match="already runs"):
        check_can_start(settings)


def test_our_own_pid_in_the_file_is_a_previous_process(tmp_path: Path) -> None:
    """The manager's container restarted: pid 1 wrote the file, and pid 1 reads it now."""
    _write(tmp_path, pid=os.getpid(), pid_started=1)
    settings = make_settings(tmp_path)
    assert running_state(settings) is None
    check_can_start(settings)  # no Conflict


def test_a_pid_given_to_a_later_process_is_stale(tmp_path: Path, other: int) -> None:
    before = started(other)
    assert before is not None
    _write(tmp_path, pid=other, pid_started=before - 1)  # the process that wrote it started earlier
    assert running_state(make_settings(tmp_path)) is None
