"""The watchdog's decisions: a dead process is restarted at once, failed restarts back off
(doubling, capped), a success resets the state and every step is a system event in the store.

The store is real (SQLite); the supervised server is a stand-in (the watchdog is the subject
here; the real processes are killed in tests/e2e/test_self_healing.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manager import store
from manager.errors import RuntimeSetupError
from manager.services.context import Platform
from manager.settings import Settings
from manager.triton.fleet import TritonFleet
from manager.triton.runtime import TritonEndpoints
from manager.watchdog import Watchdog


class LiveClient:
    """Answers a liveness check: yes."""

    def __enter__(self) -> LiveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def is_live(self) -> bool:
        return True


@dataclass
class StandInTriton:
    """Dead from the start; start() fails ``failures`` times, then works."""

    failures: int
    endpoints: TritonEndpoints = field(
        default_factory=lambda: TritonEndpoints("http://127.0.0.1:9", "127.0.0.1:10", "")
    )
    code: int | None = -9
    starts: int = 0
    stops: int = 0

    def exit_code(self) -> int | None:
        return self.code

    def stop(self, timeout_s: float = 20.0) -> None:
        self.stops += 1

    def client(self, timeout_s: float = 30.0) -> LiveClient:
        return LiveClient()

    def start(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise RuntimeSetupError("port 8100 is taken")
        self.code = None


class StandInSystem:
    def __init__(self, settings: Settings, triton: StandInTriton) -> None:
        self.settings = settings
        engine = store.make_engine(settings.db_url)
        store.init_db(engine)
        self.platform = Platform(settings=settings, engine=engine)
        self.platform.triton = TritonFleet([triton])  # type: ignore[list-item]
        self.gateway = None
        self.owns_triton = True
        self.states = 0

    def start_triton(self, index: int = 0) -> None:
        assert self.platform.triton is not None
        self.platform.triton.replicas[index].start()

    def write_state(self) -> None:
        self.states += 1


def _events(system: StandInSystem) -> list[tuple[str, str]]:
    with system.platform.session() as session:
        return [(e.kind, e.message) for e in store.list_system_events(session)][::-1]


def test_failed_restarts_back_off_then_recover(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", restart_backoff_max_s=4.0)
    settings.ensure_dirs()
    triton = StandInTriton(failures=3)
    system = StandInSystem(settings, triton)
    reconciled: list[Any] = []

    def reconcile() -> dict[str, Any]:
        reconciled.append(1)
        return {}

    dog = Watchdog(system, reconcile=reconcile)  # type: ignore[arg-type]

    dog.check_once()  # dead: restart at once, which fails
    assert (triton.starts, dog.triton.state, dog.triton.backoff_s) == (1, "failed", 2.0)
    assert dog.triton.last_error == "restart failed: port 8100 is taken"
    dog.check_once()  # within the back-off: no new attempt
    assert triton.starts == 1
    for expected_backoff in (4.0, 4.0):  # doubling, capped at restart_backoff_max_s
        dog.triton.next_attempt = 0.0  # the back-off has passed
        dog.check_once()
        assert dog.triton.state == "failed" and dog.triton.backoff_s == expected_backoff
    assert triton.starts == 3 and dog.triton.restarts == 0
    dog.triton.next_attempt = 0.0
    dog.check_once()  # the fourth try works
    assert triton.starts == 4 and triton.stops == 4
    assert dog.triton.state == "up" and dog.triton.restarts == 1
    assert reconciled == [1] and system.states == 1  # what was live is restored
    kinds = [kind for kind, _ in _events(system)]
    assert kinds == ["failed", "failed", "failed", "restart"]
    restart = _events(system)[-1][1]
    assert restart == "triton restarted after: tritonserver was killed by SIGKILL"
    assert dog.status()["triton"][0]["state"] == "up"


def test_an_external_triton_is_reported_not_restarted(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    settings.ensure_dirs()
    triton = StandInTriton(failures=0)
    system = StandInSystem(settings, triton)
    system.owns_triton = False
    reconciled: list[Any] = []

    def reconcile() -> dict[str, Any]:
        reconciled.append(1)
        return {}

    dog = Watchdog(system, reconcile=reconcile)  # type: ignore[arg-type]
    dog.check_once()
    assert triton.starts == 0 and dog.triton.state == "external-down"
    # routed around: the pool marks it down and a reconciliation pushes the table without it
    assert system.platform.triton is not None and system.platform.triton.up == [False]
    assert reconciled == [1]
    dog.check_once()  # still down: nothing more to do
    assert reconciled == [1]
    triton.code = None  # its owner restarted it: what is live is loaded there again
    dog.check_once()
    assert dog.triton.state == "up" and reconciled == [1, 1]
    assert system.platform.triton.up == [True]
    assert [kind for kind, _ in _events(system)] == ["recovered"]
