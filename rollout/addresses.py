"""Upstream addresses in routing tables: ``http://host:port`` for Triton's HTTP endpoint and
``host:port`` / ``[v6]:port`` for its gRPC one, nothing else (no path, query, user or TLS)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
GRPC_ADDRESS_RE = re.compile(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$")


def parse_upstream_url(url: str) -> tuple[str, int]:
    """Accept exactly http://host:port (optional trailing '/'): no path, query, user or TLS."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"must be http://host:port, got {url!r}") from None
    host = parts.hostname or ""
    if (
        parts.scheme != "http"
        or port is None
        or not 0 < port < 65536
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
        or not valid_host(host)
    ):
        raise ValueError(f"must be http://host:port, got {url!r}")
    return host, port


def grpc_address(grpc: str, http_host: str, http_port: int) -> tuple[str, int]:
    """Parse "host:port" / "[v6]:port" (no scheme, path or user); "" derives it from the url."""
    if not grpc:
        if http_port >= 65535:
            raise ValueError(
                f"must be set: the url's port {http_port} has no default gRPC port (port + 1)"
            )
        return http_host, http_port + 1
    match = GRPC_ADDRESS_RE.fullmatch(grpc)
    host = (match.group(1) or match.group(2)) if match else ""
    port = int(match.group(3)) if match else 0
    if match is None or not 0 < port < 65536 or not valid_host(host):
        raise ValueError(f"must be host:port (IPv6 as [addr]:port), got {grpc!r}")
    if match.group(1) is not None and not is_ipv6(host):
        raise ValueError(f"must be host:port (IPv6 as [addr]:port), got {grpc!r}")
    return host, port


def is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def valid_host(host: str) -> bool:
    if HOST_RE.fullmatch(host):
        return True
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
