"""CPU sets of embedded tritonservers (LASTMILE_TRITON_CPUS): parsed like taskset's lists,
one per replica, and refused with what is wrong before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from manager.errors import RuntimeSetupError
from manager.triton.cpus import cpu_sets, parse_cpu_list, physical_cores, pinned

EIGHT = frozenset(range(8))


def test_sets_and_ranges_are_read_as_taskset_reads_them() -> None:
    assert parse_cpu_list("0-3,6") == {0, 1, 2, 3, 6}
    assert parse_cpu_list(" 5 ") == {5}
    assert cpu_sets("0-3;4-7", 2, EIGHT) == [frozenset(range(4)), frozenset(range(4, 8))]
    assert cpu_sets(None, 3, EIGHT) is None and cpu_sets("  ", 1, EIGHT) is None
    assert pinned(["tritonserver", "--x"], frozenset({0, 1, 2, 5, 7})) == [
        "taskset", "-c", "0-2,5,7", "tritonserver", "--x",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "replicas", "message"),
    [
        ("0-3", 2, "names 1 CPU set(s) for 2 Triton replica(s)"),
        ("0-3;4-7;8", 2, "names 3 CPU set(s)"),
        ("0-3;x", 2, "replica 1's set 'x'"),
        ("3-1;4", 2, "'3-1' is not a CPU number or a range"),
        ("0;", 2, "replica 1's set ''"),
        ("0-3;6-9", 2, "replica 1 asks for CPUs 8-9"),
    ],
)
def test_a_bad_cpu_list_is_refused_with_what_is_wrong(
    text: str, replicas: int, message: str
) -> None:
    with pytest.raises(RuntimeSetupError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cpu_sets(text, replicas, EIGHT)


def test_lastmile_up_refuses_a_bad_cpu_list_before_it_starts_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ, LASTMILE_HOME=str(home), LASTMILE_TRITON_CPUS="0;x")
    proc = subprocess.run(
        [sys.executable, "-m", "manager.cli", "up", "--replicas", "2", "--detach"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    message = " ".join(proc.stderr.split())
    assert "LASTMILE_TRITON_CPUS: replica 1's set 'x'" in message and "Traceback" not in message
    assert not home.exists()  # no store, no key, no log: nothing started


def _topology(root: Path, siblings: dict[int, str]) -> Path:
    """A /sys/devices/system/cpu tree as the kernel writes it: each CPU's hardware threads."""
    for cpu, listed in siblings.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "thread_siblings_list").write_text(f"{listed}\n")
    return root


def test_auto_gives_each_server_whole_cores(tmp_path: Path) -> None:
    # two threads a core, numbered as many x86 machines do: core k is CPUs k and k+4
    spread = _topology(tmp_path / "a", {c: f"{c % 4},{c % 4 + 4}" for c in range(8)})
    assert physical_cores(EIGHT, spread) == [{0, 4}, {1, 5}, {2, 6}, {3, 7}]
    assert cpu_sets("auto", 2, EIGHT, spread) == [{0, 1, 4, 5}, {2, 3, 6, 7}]
    # neighbours as siblings; three servers on four cores: 2, 1, 1
    paired = _topology(tmp_path / "b", {c: f"{c - c % 2}-{c - c % 2 + 1}" for c in range(8)})
    assert cpu_sets("auto", 3, EIGHT, paired) == [{0, 1, 2, 3}, {4, 5}, {6, 7}]
    # only the CPUs this process may use count, and a core keeps only those of its threads
    assert physical_cores(frozenset(range(6)), spread) == [{0, 4}, {1, 5}, {2}, {3}]
    # no topology to read: every CPU is a core of its own
    assert cpu_sets("auto", 2, frozenset({0, 1, 2}), tmp_path / "none") == [{0, 1}, {2}]


def test_auto_refuses_more_servers_than_cores(tmp_path: Path) -> None:
    spread = _topology(tmp_path, {c: f"{c % 4},{c % 4 + 4}" for c in range(8)})
    with pytest.raises(RuntimeSetupError, match=r"needs a physical core per Triton replica"):
        cpu_sets("auto", 5, EIGHT, spread)
