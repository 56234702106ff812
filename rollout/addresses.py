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


_ORDINALS = re.compile(r"\{(\d+)\.\.(\d+)\}")
MAX_ORDINALS = 256


def expand_ordinals(text: str) -> list[str]:
    """``triton-{0..7}.triton-headless:8000`` -> the 8 addresses with 0 to 7 in its place, in
    order; text without a range -> ``[text]``. A StatefulSet's pods, as many as it may scale
    to: the ones that do not exist (yet) are servers that are down. ValueError for a range
    that is backwards, holds more than MAX_ORDINALS, or comes twice."""
    found = list(_ORDINALS.finditer(text))
    if not found:
        return [text]
    if len(found) > 1:
        raise ValueError(f"at most one {{A..B}} range per address, got {text!r}")
    match = found[0]
    first, last = int(match.group(1)), int(match.group(2))
    if last < first or last - first + 1 > MAX_ORDINALS:
        raise ValueError(
            f"the range {match.group(0)} in {text!r} must go up and hold at most "
            f"{MAX_ORDINALS} members"
        )
    return [f"{text[: match.start()]}{i}{text[match.end() :]}" for i in range(first, last + 1)]


def expand_list(text: str) -> list[str]:
    """A comma-separated list of addresses, each one or a range (``expand_ordinals``), in
    order; blanks between commas are skipped. ValueError for a malformed range."""
    return [
        one for entry in text.split(",") if entry.strip() for one in expand_ordinals(entry.strip())
    ]
