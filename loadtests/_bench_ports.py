"""Ports for a benchmark, from a configurable range and never one a running system uses.

`free_ports` in _models asks the kernel for an ephemeral port; a benchmark that starts nine
listeners (Triton, gateway, nginx) next to a running Lastmile wants them somewhere known
instead: a range (``--port-range 20000-29999``, below Linux's ephemeral range), a random start
in it so that two benchmarks rarely race, each port checked free by binding it (IPv4 wildcard,
which conflicts with any IPv4 listener on that port, and IPv6 where the host has it), and the
defaults a Lastmile or Triton listens on skipped even when free at this instant.
"""

from __future__ import annotations

import contextlib
import random
import socket

# Triton's and the gateway's defaults (HTTP, gRPC, metrics, admin), the API's, nginx's, and
# Prometheus': a system that is down now may come back on them in the middle of a run.
RESERVED = frozenset({80, 443, 3000, 5432, 8000, 8001, 8002, 8003, 8080, 8443, 9090})
DEFAULT_RANGE = "20000-29999"


def parse_range(text: str) -> tuple[int, int]:
    """``"LOW-HIGH"`` -> (low, high), inclusive; ValueError unless 1024 <= low <= high < 65536."""
    low_text, sep, high_text = text.partition("-")
    try:
        low, high = int(low_text), int(high_text if sep else low_text)
    except ValueError:
        raise ValueError(f"port range must look like 20000-29999, got {text!r}") from None
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"port range must lie within 1024-65535 (low <= high), got {text!r}")
    return low, high


def _bindable(port: int) -> bool:
    """True when nothing is bound to `port` (IPv4 wildcard, and IPv6 where available)."""
    families = [(socket.AF_INET, "0.0.0.0")]
    if socket.has_ipv6:
        families.append((socket.AF_INET6, "::"))
    for family, host in families:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 in this kernel/namespace: nothing can listen there either
        with contextlib.closing(sock):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


class PortPicker:
    """Hands out distinct free ports of [low, high], starting at a random place in it."""

    def __init__(self, low: int, high: int, seed: int | None = None) -> None:
        self.low, self.high = low, high
        self._next = random.Random(seed).randint(low, high)
        self._given: set[int] = set()

    @classmethod
    def from_text(cls, text: str) -> PortPicker:
        return cls(*parse_range(text))

    def take(self, n: int = 1) -> list[int]:
        """`n` ports free right now; RuntimeError when the range has too few."""
        out: list[int] = []
        size = self.high - self.low + 1
        for _ in range(size):
            if len(out) == n:
                return out
            port = self._next
            self._next = self.low if port >= self.high else port + 1
            if port in RESERVED or port in self._given or not _bindable(port):
                continue
            self._given.add(port)
            out.append(port)
        if len(out) == n:
            return out
        raise RuntimeError(
            f"only {len(out)} free port(s) of the {n} needed in {self.low}-{self.high}"
        )
