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
        fleet = system.platform.triton
        self.replicas = [
            Component("triton" if i == 0 else f"triton-{i}", replica.endpoints.http_url)
            for i, replica in enumerate(fleet.replicas if fleet else [])
        ]
        for comp, up in zip(self.replicas, fleet.up if fleet else [], strict=True):
            if not up:  # an external server that did not answer at start: it joins when it does
                comp.state, comp.last_error = "external-down", "not up when the system started"
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
            if self.triton_up() and self.gateway.state == "up":
                self._reconcile("timer")

    @property
    def triton(self) -> Component:
        """The first replica (a single-server system's Triton)."""
        return self.replicas[0]

    def triton_up(self) -> bool:
        """At least one replica of the pool is up (the gateway serves from those)."""
        return any(c.state == "up" for c in self.replicas)

    def _check_triton(self) -> None:
        fleet = self.system.platform.triton
        if fleet is None:
            return
        for index, (replica, comp) in enumerate(zip(fleet.replicas, self.replicas, strict=True)):
            if self._stop.is_set():
                return
            self._check_replica(index, replica, comp)

    def _check_replica(self, index: int, replica: Any, comp: Component) -> None:
        code = replica.exit_code()
        if code is not None:
            self._failed(comp, _exit_reason("tritonserver", code), dead=True)
        else:
            with replica.client(2.0) as client:
                healthy = client.is_live()
            if healthy:
                was = comp.state
                self._healthy(comp)
                fleet = self.system.platform.triton
                if was == "external-down":  # restarted by someone else, or a pod that joined
                    self.event("recovered", comp, "the external Triton answers again")
                    if fleet is not None:  # routed to once it has what is live (reconcile)
                        fleet.up[index] = True
                    self._reconcile("the external Triton came back")
                return
            self._failed(comp, "tritonserver failed its liveness check", dead=False)
        if not self.system.owns_triton:
            was = comp.state
            comp.state = "external-down"
            fleet = self.system.platform.triton
            if fleet is not None and fleet.up[index]:  # gone, or scaled away: route around it
                fleet.up[index] = False
                if was == "up":
                    self._reconcile("an external Triton stopped answering")
            return
        self._maybe_restart(comp, lambda: self._restart_triton(index))

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

    def _restart_triton(self, index: int) -> None:
        system = self.system
        fleet = system.platform.triton
        assert fleet is not None
        # The whole group, without a grace period (it is dead or wedged): its stubs go too.
        fleet.replicas[index].stop(timeout_s=0.0)
        system.start_triton(index)

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
        looks: one store query and one repository index per replica)."""
        live = self._live_ensembles()
        if not live:
            return {}
        if not self.triton_up():
            comp = self.triton
            return dict.fromkeys(live, f"Triton is {comp.state}: {comp.last_error}")
        if self.gateway.state != "up":
            reason = f"the gateway is {self.gateway.state}: {self.gateway.last_error}"
            return dict.fromkeys(live, reason)
        per_replica = self._ready_per_replica(live)
        answered = [ready for ready in per_replica if not isinstance(ready, str)]
        if not answered:
            errors = [r for r in per_replica if isinstance(r, str)]
            return dict.fromkeys(live, f"Triton did not answer: {errors[0] if errors else ''}")
        served = set().union(*answered)  # READY on at least one replica that is up
        return {e: "not loaded on Triton" for e in live if e not in served}

    def replica_serving(self) -> list[dict[str, Any]]:
        """Per replica: how many of the live deployments' ensembles it serves, and which it
        lacks (a replica that restarted catches up at the next reconciliation)."""
        live = self._live_ensembles()
        out: list[dict[str, Any]] = []
        for ready in self._ready_per_replica(live):
            if isinstance(ready, str):
                out.append({"serving": None, "of": len(live), "error": ready})
            else:
                missing = sorted(e for e in live if e not in ready)
                out.append(
                    {"serving": len(live) - len(missing), "of": len(live), "missing": missing}
                )
        return out

    def _live_ensembles(self) -> list[str]:
        with self.system.platform.session() as session:
            return [d.ensemble for d in store.list_deployments(session) if d.state == "live"]

    def _ready_per_replica(self, live: list[str]) -> list[set[str] | str]:
        """Each replica's READY models among ``live``, or why it could not tell (down, no
        answer). A server we push models to lists in its index only its own repository's, so
        it is asked model by model."""
        fleet = self.system.platform.triton
        out: list[set[str] | str] = []
        for replica, comp in zip(fleet.replicas if fleet else [], self.replicas, strict=True):
            if comp.state != "up":
                out.append(f"Triton is {comp.state}: {comp.last_error}")
                continue
            try:
                with replica.client(2.0) as client:
                    if not replica.shares_repository:
                        out.append({name for name in live if client.is_model_ready(name)})
                        continue
                    index = client.repository_index()
            except LastmileError as exc:
                out.append(str(exc))
                continue
            out.append({str(m.get("name")) for m in index if m.get("state") == "READY"})
        return out

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
        """Per Triton replica (in pool order) and for the gateway."""
        return {"triton": [c.public() for c in self.replicas], "gateway": self.gateway.public()}


def _exit_reason(what: str, code: int) -> str:
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{what} was killed by {name}"
    return f"{what} exited with code {code}"
