"""What every service needs, built once per process by the entry point."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session

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

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session
