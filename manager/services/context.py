"""What every service needs, built once per process by the entry point."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager.errors import Conflict
from manager.repository.digests import DigestCache
from manager.settings import Settings
from manager.triton.fleet import TritonFleet

if TYPE_CHECKING:
    from manager.services.gateway_pool import GatewayPool


@dataclass
class Platform:
    """Settings, the store's engine, the Triton runtime and the gateway admin URL."""

    settings: Settings
    engine: Engine
    triton: TritonFleet | None = None  # the pool of Triton servers (one or more replicas)
    gateway_admin_url: str | None = None
    # The gateway's Prometheus endpoint: live per-variant figures for rollout gates.
    gateway_metrics_url: str | None = None
    # Every gateway's per-variant figures as one (this one's and LASTMILE_GATEWAY_METRICS_URLS)
    gateway_pool: GatewayPool | None = None
    # Secret the gateway's admin endpoint requires (``Authorization: Bearer``), made per start.
    gateway_admin_token: str | None = None
    # Set by the running system: live ensembles that are not served right now, and why.
    # Called per status or deployment listing (not cached).
    unserved: Callable[[], dict[str, str]] = field(default=dict)
    deploy_lock: threading.Lock = field(default_factory=threading.Lock)
    # Files hashed by earlier reconciliations (keyed by inode, size and times: a changed file
    # is hashed again), so a reconcile on a timer does not read every model file every time.
    digests: DigestCache = field(default_factory=DigestCache)
    _busy: set[str] = field(default_factory=set)
    _busy_lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def exclusive(self, key: str, what: str) -> Iterator[None]:
        """At most one change of ``key`` (e.g. one pipeline's deployment) at a time: a second
        concurrent one is a 409 at once instead of queueing behind the first."""
        with self._busy_lock:
            if key in self._busy:
                raise Conflict(
                    f"{what} is already in progress",
                    hint="wait for it to finish, then look at the deployment's status",
                )
            self._busy.add(key)
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy.discard(key)

    def served_state(
        self, info: dict[str, Any], unserved: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A deployment's info with the truth of the moment: a live deployment that is not
        actually served (Triton down, model not loaded, gateway down) is ``unavailable``.
        ``unserved``: what ``self.unserved()`` answered, asked once for a whole listing."""
        if info.get("state") == "live":
            if unserved is None:
                unserved = self.unserved()
            reason = unserved.get(info.get("ensemble", ""))
            if reason:
                return {**info, "state": "unavailable", "error": reason}
        return info

    def gateway_admin_headers(self) -> dict[str, str]:
        """Headers for calls to the gateway's admin endpoint (GET/PUT /routes)."""
        if not self.gateway_admin_token:
            return {}
        return {"Authorization": f"Bearer {self.gateway_admin_token}"}

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session
