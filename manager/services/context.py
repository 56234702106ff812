"""What every service needs, built once per process by the entry point."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager.errors import Conflict
from manager.settings import Settings
from manager.triton.runtime import TritonRuntime


@dataclass
class Platform:
    """Settings, the store's engine, the Triton runtime and the gateway admin URL."""

    settings: Settings
    engine: Engine
    triton: TritonRuntime | None = None
    gateway_admin_url: str | None = None
    deploy_lock: threading.Lock = field(default_factory=threading.Lock)
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

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session
