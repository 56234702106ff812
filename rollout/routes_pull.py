"""Routing tables pulled from the control plane (``--routes-url``), for gateways that the
control plane cannot reach on their loopback admin port: the replicas of a Kubernetes
Deployment, say. Each polls ``GET <url>`` with ``Authorization: Bearer <token>`` and
``If-None-Match`` (the manager answers 304 while the table is unchanged) and installs a new
table through the same admission as ``PUT /routes``: allowed upstreams, generations that only
go forward, the routes file.

A manager that is down or answers an error leaves the current table serving; the gateway says
so in its log once per kind of failure, not at every poll.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rollout.admission import TableRefused
from rollout.routing import RoutingTable

if TYPE_CHECKING:
    from rollout.admin_api import AdminApi

logger = logging.getLogger(__name__)

MAX_TABLE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Pulled:
    """One poll's answer: a table, or ``None`` when unchanged (304)."""

    body: bytes | None
    etag: str | None


def fetch(url: str, token: str | None, etag: str | None, timeout_s: float) -> Pulled:
    """GET the table (blocking; run it in a thread). ValueError says what went wrong."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if etag is not None:
        request.add_header("If-None-Match", etag)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read(MAX_TABLE_BYTES + 1)
            if len(body) > MAX_TABLE_BYTES:
                raise ValueError(f"{url} answered more than {MAX_TABLE_BYTES} bytes")
            return Pulled(body, response.headers.get("ETag"))
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return Pulled(None, etag)
        raise control_plane_failure(url, exc) from None
    except (urllib.error.URLError, OSError) as exc:
        raise control_plane_failure(url, exc) from None


def control_plane_failure(url: str, exc: OSError) -> ValueError:
    """What went wrong calling the control plane, said once for the gateway's log."""
    if isinstance(exc, urllib.error.HTTPError):
        detail = exc.read(500).decode("utf-8", "replace").strip()
        hint = " (check --routes-token-file)" if exc.code in (401, 403) else ""
        return ValueError(f"{url} answered HTTP {exc.code}{hint}: {detail}")
    return ValueError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}")


class RoutesPuller:
    """Polls the control plane every ``interval_s`` and installs what changed."""

    def __init__(
        self, admin: AdminApi, url: str, token: str | None, interval_s: float = 2.0
    ) -> None:
        self.admin = admin
        self.url = url
        self.token = token
        self.interval_s = interval_s
        self.etag: str | None = None
        self.pulls = {"installed": 0, "unchanged": 0, "failed": 0, "refused": 0}
        self._last_problem: str | None = None

    async def run(self) -> None:
        while True:
            await self.pull_once()
            await asyncio.sleep(self.interval_s)

    async def pull_once(self) -> str:
        """One poll; its outcome (a key of ``pulls``)."""
        timeout = max(1.0, min(10.0, 4 * self.interval_s))
        try:
            pulled = await asyncio.to_thread(fetch, self.url, self.token, self.etag, timeout)
            if pulled.body is None:
                return self._count("unchanged")
            table = RoutingTable.from_json(pulled.body)
        except ValueError as exc:
            self._problem(f"routing table not pulled: {exc}; the current table keeps serving")
            return self._count("failed")
        current = self.admin.gateway.table
        if current is not None and current.to_json() == table.to_json():
            self.etag = pulled.etag
            return self._count("unchanged")
        try:
            await self.admin.install(table)
        except TableRefused as exc:
            self._problem(f"routing table from {self.url} refused: {exc}")
            return self._count("refused")
        self.etag = pulled.etag
        return self._count("installed")

    def _count(self, outcome: str) -> str:
        self.pulls[outcome] += 1
        if outcome in ("installed", "unchanged") and self._last_problem is not None:
            logger.info("routing table pulled from %s again", self.url)
            self._last_problem = None
        return outcome

    def _problem(self, message: str) -> None:
        if message != self._last_problem:
            logger.warning("%s", message)
            self._last_problem = message
