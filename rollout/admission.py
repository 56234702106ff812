"""Admission: the checks a well-formed routing table must also pass before this gateway installs
it — its upstreams are ones this gateway may talk to, and its generation moves forward but not
absurdly far (a table stamped 2**62 would otherwise refuse every later push as stale)."""

from __future__ import annotations

from rollout.addresses import GRPC_ADDRESS_RE, is_ipv6, valid_host
from rollout.routing import RoutingTable


class TableRefused(ValueError):
    """A well-formed table the gateway will not install; `status` is the admin API's answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_address(text: str) -> tuple[str, int]:
    """ "host:port" or "[v6]:port" -> (host in lower case, port); ValueError otherwise."""
    match = GRPC_ADDRESS_RE.fullmatch(text.strip())
    host = (match.group(1) or match.group(2)) if match else ""
    port = int(match.group(3)) if match else 0
    if match is None or not 0 < port < 65536 or not valid_host(host):
        raise ValueError(f"must be HOST:PORT (IPv6 as [addr]:PORT), got {text!r}")
    if match.group(1) is not None and not is_ipv6(host):
        raise ValueError(f"must be HOST:PORT (IPv6 as [addr]:PORT), got {text!r}")
    return host.lower(), port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_upstreams(table: RoutingTable, allowed: frozenset[tuple[str, int]]) -> None:
    """TableRefused (422) naming the route and address of the first target whose HTTP or gRPC
    address is not in `allowed` ((lower-case host, port) pairs)."""
    for key in sorted(table.routes):
        for variant in table.routes[key].variants:
            for index, target in enumerate(variant.targets):
                for field_name, host, port in (
                    ("url", target.host, target.port),
                    ("grpc", target.grpc_host, target.grpc_port),
                ):
                    if (host.lower(), port) not in allowed:
                        shown = (
                            ", ".join(format_address(h, p) for h, p in sorted(allowed)) or "none"
                        )
                        raise TableRefused(
                            422,
                            f"route {key!r}: variant {variant.name!r} targets[{index}]."
                            f"{field_name} points at {format_address(host, port)}, which is not "
                            f"an allowed upstream of this gateway (allowed: {shown})",
                        )


def check_generation(generation: int, *, current: int | None, now_ms: int, window_ms: int) -> None:
    """Refuse a stale generation (409) and one too far ahead (422).

    Ahead means past max(current generation, wall clock in ms) + `window_ms`: a table stamped
    with an absurd generation (2**62) would otherwise refuse every later push as stale.
    """
    if current is not None and generation < current:
        raise TableRefused(409, f"stale routing table: generation {generation} < current {current}")
    ceiling = max(current or 0, now_ms) + window_ms
    if generation > ceiling:
        raise TableRefused(
            422,
            f"routing table generation {generation} is too far ahead: the gateway accepts at "
            f"most {ceiling} now (max of the current generation and the clock in ms, plus "
            f"{window_ms} ms); use the time in milliseconds or a counter",
        )
