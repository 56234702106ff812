"""CPU sets for embedded tritonservers (``LASTMILE_TRITON_CPUS``): one set per replica, so
that servers serving different variants do not take each other's cores.

``0-3;4-7`` gives replica 0 CPUs 0-3 and replica 1 CPUs 4-7; a set is a comma-separated list
of CPUs and ranges, as ``taskset -c`` reads it. ``auto`` splits the CPUs this process may use
into one set per replica by whole physical cores (the kernel's
``topology/thread_siblings_list``): two hardware threads of one core never go to two servers.
The server is started under ``taskset``, so it and every model process it starts
(Python-backend stubs) inherit the set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from manager.errors import RuntimeSetupError

_WHAT = "LASTMILE_TRITON_CPUS"
SYSFS_CPUS = Path("/sys/devices/system/cpu")


def parse_cpu_list(text: str) -> frozenset[int]:
    """``0-3,8`` -> {0, 1, 2, 3, 8}; ValueError says what is wrong."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise ValueError(f"{part!r} is not a CPU number or a range like 0-3") from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a CPU number or a range like 0-3")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def cpu_sets(
    text: str | None,
    replicas: int,
    available: frozenset[int] | None = None,
    sysfs: Path = SYSFS_CPUS,
) -> list[frozenset[int]] | None:
    """One CPU set per replica (None: not pinned). RuntimeSetupError names what is wrong: a
    count that differs from the replicas, a malformed set, CPUs this process may not use,
    fewer physical cores than replicas for ``auto``."""
    if text is None or not text.strip():
        return None
    usable = available if available is not None else frozenset(os.sched_getaffinity(0))
    if text.strip() == "auto":
        entries = [format_cpu_list(sorted(c)) for c in split_by_core(usable, replicas, sysfs)]
    else:
        entries = [e.strip() for e in text.split(";")]
    if len(entries) != replicas:
        raise RuntimeSetupError(
            f"{_WHAT} names {len(entries)} CPU set(s) for {replicas} Triton replica(s)",
            hint="one set per replica, separated by ';', e.g. 0-3;4-7 for --replicas 2",
        )
    sets = []
    for index, entry in enumerate(entries):
        try:
            cpus = parse_cpu_list(entry)
        except ValueError as exc:
            raise RuntimeSetupError(
                f"{_WHAT}: replica {index}'s set {entry!r}: {exc}",
                hint="CPU numbers and ranges separated by ',', e.g. 0-3,8",
            ) from None
        missing = sorted(cpus - usable)
        if missing:
            raise RuntimeSetupError(
                f"{_WHAT}: replica {index} asks for CPUs {format_cpu_list(missing)}, which this "
                f"machine does not give this process",
                hint=f"usable CPUs: {format_cpu_list(sorted(usable))}",
            )
        sets.append(cpus)
    if shutil.which("taskset") is None:
        raise RuntimeSetupError(
            f"{_WHAT} needs the taskset command to pin the servers",
            hint="install util-linux (apt install util-linux)",
        )
    return sets


def physical_cores(usable: frozenset[int], sysfs: Path = SYSFS_CPUS) -> list[frozenset[int]]:
    """The usable CPUs grouped by physical core, in CPU order; a CPU whose topology cannot be
    read counts as a core of its own."""
    cores: dict[frozenset[int], None] = {}
    for cpu in sorted(usable):
        try:
            text = (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text()
            siblings = parse_cpu_list(text.strip()) & usable
        except (OSError, ValueError):
            siblings = frozenset()
        cores.setdefault(siblings or frozenset({cpu}), None)
    return sorted(cores, key=min)


def split_by_core(
    usable: frozenset[int], replicas: int, sysfs: Path = SYSFS_CPUS
) -> list[frozenset[int]]:
    """``replicas`` CPU sets of whole cores, neighbours together, as even as the cores allow
    (the first sets take one more core when they do not divide)."""
    cores = physical_cores(usable, sysfs)
    if len(cores) < replicas:
        raise RuntimeSetupError(
            f"{_WHAT}=auto needs a physical core per Triton replica: this process may use "
            f"{len(cores)} core(s) ({format_cpu_list(sorted(usable))}) for {replicas} replicas",
            hint="run fewer replicas, or give the CPU sets yourself (e.g. 0-3;4-7)",
        )
    share, extra = divmod(len(cores), replicas)
    sets, start = [], 0
    for index in range(replicas):
        size = share + (1 if index < extra else 0)
        sets.append(frozenset().union(*cores[start : start + size]))
        start += size
    return sets


def pinned(cmd: list[str], cpus: frozenset[int]) -> list[str]:
    """``cmd`` run on ``cpus`` only (taskset execs it: the same process id)."""
    return ["taskset", "-c", format_cpu_list(sorted(cpus)), *cmd]


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (taskset's form)."""
    out: list[str] = []
    start = prev = cpus[0] if cpus else 0
    for cpu in cpus[1:]:
        if cpu == prev + 1:
            prev = cpu
            continue
        out.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = cpu
    if cpus:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(out)
