"""Supervision of what ``lastmile up`` runs: restart what died or wedged, restore what it
served, and know at every moment whether each live deployment is really served.

One thread checks every ``LASTMILE_SUPERVISE_INTERVAL_S``: a child that exited is restarted at
once; one that is running but fails ``LASTMILE_HEALTH_FAILURES_BEFORE_RESTART`` health checks
in a row is wedged, and is killed (its whole process group, stubs included) and restarted.
Restarts that keep failing wait longer each time (1 s doubling up to
``LASTMILE_RESTART_BACKOFF_MAX_S``). After Triton comes back, what the store says is live is
loaded again and the gateway's routes re-pushed (the reconciler); after the gateway comes back,
it serves its persisted table and gets the current one pushed. Every restart, failure and
recovery is a system event in the store (``lastmile events``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from manager import store
from manager.errors import LastmileError

if TYPE_CHECKING:
    from manager.system import System

log = logging.getLogger(__name__)


@dataclass
class Component:
    """One supervised process as ``lastmile status`` shows it."""

    name: str
    endpoint: str
    state: str = "up"  # up | restarting | failed | external-down
    restarts: int = 0
    last_error: str | None = None
    last_restart_at: str | None = None
    failures: int = 0  # consecutive failed health checks
    backoff_s: float = 1.0
    next_attempt: float = 0.0
    up_since: float = field(default_factory=time.monotonic)

    def public(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_restart_at": self.last_restart_at,
        }


class Watchdog:
    """Health checks, restarts with backoff, restores and periodic reconciliation."""

    def __init__(self, system: System, *, reconcile: Callable[[], Any]) -> None:
        self.system = system
        self.settings = system.settings
        self.reconcile = reconcile
        triton = system.platform.triton
        self.triton = Component("triton", triton.endpoints.http_url if triton else "")
        self.gateway = Component(
            "gateway", system.gateway.admin_url if system.gateway else "", state="up"
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_reconcile = time.monotonic() + self.settings.reconcile_interval_s

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lastmile-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.triton_start_timeout_s + 30)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.supervise_interval_s):
            try:
                self.check_once()
            except Exception:  # the watchdog must outlive any one bad check
                log.exception("supervision check failed")

    # -- one round ----------------------------------------------------------------------------
    def check_once(self) -> None:
        self._check_triton()
        if self._stop.is_set():
            return
        self._check_gateway()
        interval = self.settings.reconcile_interval_s
        if interval > 0 and time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + interval
            if self.triton.state == "up" and self.gateway.state == "up":
                self._reconcile("timer")

    def _check_triton(self) -> None:
        triton = self.system.platform.triton
        if triton is None:
            return
        comp = self.triton
        code = triton.exit_code()
        if code is not None:
            self._failed(comp, _exit_reason("tritonserver", code), dead=True)
        else:
            with triton.client(2.0) as client:
                healthy = client.is_live()
            if healthy:
                was = comp.state
                self._healthy(comp)
                if was == "external-down":  # someone else restarted it: load what is live
                    self.event("recovered", comp, "the external Triton answers again")
                    self._reconcile("the external Triton came back")
                return
            self._failed(comp, "tritonserver failed its liveness check", dead=False)
        if not self.system.owns_triton:
            comp.state = "external-down"
            return
        self._maybe_restart(comp, self._restart_triton)

    def _check_gateway(self) -> None:
        gateway = self.system.gateway
        if gateway is None:
            return
        comp = self.gateway
        code = gateway.exit_code()
        if code is not None:
            self._failed(comp, _exit_reason("the gateway", code), dead=True)
        elif gateway.healthy():
            self._healthy(comp)
            return
        else:
            self._failed(comp, "the gateway's admin endpoint did not answer", dead=False)
        self._maybe_restart(comp, self._restart_gateway)

    def _healthy(self, comp: Component) -> None:
        if comp.state != "up":
            comp.state = "up"
        comp.failures = 0
        if time.monotonic() - comp.up_since > 60:
            comp.backoff_s = 1.0  # stable for a minute: the next failure restarts fast again

    def _failed(self, comp: Component, reason: str, *, dead: bool) -> None:
        comp.failures = (
            max(comp.failures + 1, self.settings.health_failures_before_restart)
            if dead
            else comp.failures + 1
        )
        if comp.last_error != reason or comp.state == "up":
            log.warning("%s: %s", comp.name, reason)
        comp.last_error = reason

    def _maybe_restart(self, comp: Component, restart: Callable[[], None]) -> None:
        if comp.failures < self.settings.health_failures_before_restart:
            return
        now = time.monotonic()
        if now < comp.next_attempt:
            return
        cause = comp.last_error or "unhealthy"
        comp.state = "restarting"
        started = time.monotonic()
        try:
            restart()
        except (LastmileError, OSError) as exc:
            comp.state = "failed"
            comp.last_error = f"restart failed: {exc}"
            comp.next_attempt = time.monotonic() + comp.backoff_s
            self.event(
                "failed",
                comp,
                f"{comp.name} could not be restarted ({exc}); next try in {comp.backoff_s:.0f} s",
                {"cause": cause},
            )
            comp.backoff_s = min(comp.backoff_s * 2, self.settings.restart_backoff_max_s)
            return
        comp.restarts += 1
        comp.failures = 0
        comp.state = "up"
        comp.up_since = time.monotonic()
        comp.last_restart_at = datetime.now(timezone.utc).isoformat()
        comp.next_attempt = time.monotonic() + comp.backoff_s
        comp.backoff_s = min(comp.backoff_s * 2, self.settings.restart_backoff_max_s)
        took = time.monotonic() - started
        try:
            self.system.write_state()
        except OSError as exc:
            log.warning("could not rewrite the state file: %s", exc)
        self.event(
            "restart",
            comp,
            f"{comp.name} restarted after: {cause}",
            {"cause": cause, "seconds": round(took, 3), "restarts": comp.restarts},
        )
        self._reconcile(f"{comp.name} restarted")

    def _restart_triton(self) -> None:
        system = self.system
        triton = system.platform.triton
        assert triton is not None
        # The whole group, without a grace period (it is dead or wedged): its stubs go too.
        triton.stop(timeout_s=0.0)
        system.start_triton()

    def _restart_gateway(self) -> None:
        gateway = self.system.gateway
        assert gateway is not None
        gateway.stop(timeout_s=0.0)
        self.system.start_gateway()

    def _reconcile(self, why: str) -> None:
        try:
            report = self.reconcile()
        except LastmileError as exc:
            log.error("reconciliation (%s) failed: %s", why, exc)
            return
        actions = report.get("actions", []) if isinstance(report, dict) else []
        errors = report.get("errors", []) if isinstance(report, dict) else []
        if actions or errors:
            component = Component("reconcile", "")
            self.event(
                "reconcile",
                component,
                f"reconciliation after {why}: {len(actions)} repair(s), {len(errors)} error(s)",
                {"actions": actions[:100], "errors": errors[:100]},
            )

    def unserved(self) -> dict[str, str]:
        """Which live deployments are not served right now, and why (asked when someone
        looks: one store query and one repository index)."""
        platform = self.system.platform
        with platform.session() as session:
            live = [d.ensemble for d in store.list_deployments(session) if d.state == "live"]
        if not live:
            return {}
        if self.triton.state != "up":
            return dict.fromkeys(live, f"Triton is {self.triton.state}: {self.triton.last_error}")
        if self.gateway.state != "up":
            reason = f"the gateway is {self.gateway.state}: {self.gateway.last_error}"
            return dict.fromkeys(live, reason)
        assert platform.triton is not None
        try:
            with platform.triton.client(2.0) as client:
                index = client.repository_index()
        except LastmileError as exc:
            return dict.fromkeys(live, f"Triton did not answer: {exc}")
        ready = {m.get("name") for m in index if m.get("state") == "READY"}
        return {e: "not loaded on Triton" for e in live if e not in ready}

    # -- events -------------------------------------------------------------------------------
    def event(
        self, kind: str, comp: Component, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        log.warning("%s", message)
        component = f"{comp.name} {comp.endpoint}".strip()
        try:
            with self.system.platform.session() as session:
                store.add_system_event(
                    session, kind=kind, component=component, message=message, detail=detail
                )
                session.commit()
        except Exception:  # the store may be what is failing; the log has the event
            log.exception("could not record a system event")

    def status(self) -> dict[str, Any]:
        return {"triton": self.triton.public(), "gateway": self.gateway.public()}


def _exit_reason(what: str, code: int) -> str:
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{what} was killed by {name}"
    return f"{what} exited with code {code}"
