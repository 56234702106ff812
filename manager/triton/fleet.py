"""A pool of Triton servers that serve the same models: what ``lastmile up --replicas N`` runs,
or the external servers listed in ``LASTMILE_TRITON_URL``.

The control plane talks to the pool as to one server (``TritonFleet`` has the runtime's
shape); ``FleetClient`` fans each control call out to the replicas that are up:

- a load, unload or warm-up goes to every live replica in turn (one at a time: on shared
  cores, loading a Python-backend stub on every server at once would stall them all), and a
  replica that refuses it fails the call; a replica that is down is skipped (when it comes back,
  the watchdog's reconciliation loads what is live there, ``only_where_missing``);
- a model is ready when it is ready on every live replica; the repository index reports a model
  READY only where every live replica has it READY;
- no live replica at all is ``TritonUnavailable``.

The gateway gets every replica as a target of every variant and balances between them; the
watchdog supervises each replica on its own (``manager.watchdog``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

from manager.errors import TritonError, TritonUnavailable
from manager.triton.client import TritonClient
from manager.triton.runtime import TritonEndpoints, TritonRuntime

log = logging.getLogger(__name__)

_RANK = {"READY": 3, "LOADING": 2, "UNLOADING": 1}  # the weakest state wins


class TritonFleet:
    """N Triton servers as one runtime (a single server is a fleet of one)."""

    def __init__(self, replicas: Sequence[TritonRuntime]) -> None:
        if not replicas:
            raise ValueError("a Triton fleet needs at least one server")
        self.replicas = list(replicas)
        # which replicas are up, as last seen (start-up, then the watchdog's checks): the
        # gateway is routed to those only
        self.up = [True] * len(self.replicas)

    def serving_replicas(self) -> list[TritonRuntime]:
        """The replicas to route to: those up (all of them while none is, so that a table
        still names the pool and the gateway answers 'unavailable' on its own)."""
        up = [r for r, is_up in zip(self.replicas, self.up, strict=True) if is_up]
        return up or list(self.replicas)

    def start_external(self, timeout_s: float) -> None:
        """Wait until at least one of servers we do not own is ready; the others are down
        until they answer (a pod not scheduled yet, or scaled away). TritonUnavailable when
        none answers in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for index, replica in enumerate(self.replicas):
                with replica.client(2.0) as client:
                    self.up[index] = client.is_ready()
            if any(self.up):
                down = [
                    r.endpoints.http_url
                    for r, ok in zip(self.replicas, self.up, strict=True)
                    if not ok
                ]
                if down:
                    log.info("Triton servers not up yet (they join when they answer): %s", down)
                return
            if time.monotonic() >= deadline:
                listed = ", ".join(r.endpoints.http_url for r in self.replicas)
                raise TritonUnavailable(
                    f"none of the Triton servers became ready within {timeout_s:.0f} s: {listed}",
                    hint="check that they run and that LASTMILE_TRITON_URL names them",
                )
            time.sleep(0.5)

    @property
    def endpoints(self) -> TritonEndpoints:
        """The first replica's (where one address is wanted: logs, single-server tools)."""
        return self.replicas[0].endpoints

    @property
    def shares_repository(self) -> bool:
        return all(r.shares_repository for r in self.replicas)

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        for replica in self.replicas:
            try:
                replica.stop(timeout_s)
            except Exception:  # one server failing to stop must not keep the others up
                log.exception("stopping Triton at %s failed", replica.endpoints.http_url)

    def exit_code(self) -> int | None:
        """The first dead replica's exit status (None while all run)."""
        for replica in self.replicas:
            code = replica.exit_code()
            if code is not None:
                return code
        return None

    def client(self, timeout_s: float = 30.0) -> FleetClient:
        return FleetClient([r.client(timeout_s) for r in self.replicas])


class FleetClient:
    """The control calls of ``TritonClient``, fanned out over a fleet's live replicas."""

    def __init__(
        self, clients: list[TritonClient], *, skip_ready: Collection[int] | None = None
    ) -> None:
        self.clients = clients
        self.skip_ready = skip_ready

    @property
    def url(self) -> str:
        return ", ".join(c.url for c in self.clients)

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def only_where_missing(self, versions: Collection[int]) -> FleetClient:
        """The same replicas, but a load skips those that already serve every one of
        ``versions`` of the model: for restoring a restarted replica without reloading (and
        stalling) the healthy ones. Closing it closes the shared clients."""
        return FleetClient(self.clients, skip_ready=tuple(versions))

    def _serves(self, client: TritonClient, name: str) -> bool:
        if self.skip_ready is None:
            return False
        versions = [str(v) for v in self.skip_ready] or [""]
        return all(client.is_model_ready(name, v) for v in versions)

    def _live(self) -> list[TritonClient]:
        live = [c for c in self.clients if c.is_live()]
        if not live:
            raise TritonUnavailable(
                f"no Triton server answers ({self.url})",
                hint="lastmile status shows each server's state; the watchdog restarts them",
            )
        return live

    # -- health ---------------------------------------------------------------------------
    def is_ready(self) -> bool:
        return any(c.is_ready() for c in self.clients)

    def is_live(self) -> bool:
        return any(c.is_live() for c in self.clients)

    def wait_ready(self, timeout_s: float) -> None:
        for client in self.clients:
            client.wait_ready(timeout_s)

    # -- repository -----------------------------------------------------------------------
    def load_model(
        self, name: str, *, config: Any | None = None, files: dict[str, bytes] | None = None
    ) -> None:
        for client in self._live():
            if self._serves(client, name):
                continue
            try:
                client.load_model(name, config=config, files=files)
            except TritonError as exc:
                # Triton 2.51 loads a pushed ensemble, then also tries to poll its composing
                # models from its own repository (where pushed models are not) and reports
                # that as a failure: the ensemble is loaded on this server when it is ready.
                if files is None or "failed to poll" not in exc.message:
                    raise
                if not client.is_model_ready(name):
                    raise
                log.info("%s loaded on %s; ignoring Triton's poll error", name, client.url)

    def unload_model(self, name: str, *, unload_dependents: bool = False) -> None:
        for client in self._live():
            client.unload_model(name, unload_dependents=unload_dependents)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        try:
            live = self._live()
        except TritonUnavailable:
            return False
        return all(c.is_model_ready(name, version) for c in live)

    def warm_up(self, name: str, inputs: list[tuple[str, str, list[int]]], count: int) -> None:
        for client in self._live():
            client.warm_up(name, inputs, count)

    def repository_index(self) -> list[dict[str, Any]]:
        """Triton's index, merged: per (name, version) the weakest state over live replicas,
        and an entry one replica lacks is not READY."""
        indexes = [c.repository_index() for c in self._live()]
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        seen_in: dict[tuple[str, str], int] = {}
        for index in indexes:
            for entry in index:
                key = (str(entry.get("name")), str(entry.get("version", "")))
                seen_in[key] = seen_in.get(key, 0) + 1
                held = merged.get(key)
                if held is None or _RANK.get(str(entry.get("state")), 0) < _RANK.get(
                    str(held.get("state")), 0
                ):
                    merged[key] = dict(entry)
        for key, entry in merged.items():
            if seen_in[key] < len(indexes) and entry.get("state") == "READY":
                entry["state"] = "UNAVAILABLE"
                entry["reason"] = "not loaded on every Triton server"
        return list(merged.values())

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        return self._live()[0].model_metadata(name, version)

    def model_config(self, name: str) -> Any:
        return self._live()[0].model_config(name)

    def metrics_text(self) -> str:
        return self._live()[0].metrics_text()
