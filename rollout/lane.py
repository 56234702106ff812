"""A slow lane on the event loop for work that no client waits for (shadow copies' answers).

A shadow candidate that holds its answers (a batcher waiting to fill, a stalled server)
returns them all at once: up to `shadow.max_queue` of them become readable in the same poll
of the loop. Handled where they arrive, each costs the loop its parsing, its counters and its
hand-off to the diff thread, one after the other, and a primary whose bytes arrived in the same
poll waits for all of them (`loadtests/bench_shadow_burst.py`).

The lane runs at most `per_turn` items each time the loop turns and lets the loop poll for I/O
between turns, so a primary waits behind at most that many. Items run in the order they were
pushed; what pushes them must keep its own state consistent until they run (a connection
handing its bytes here flushes them itself before it reports its loss).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

PER_TURN = 1


class SlowLane:
    """Callbacks run a few per loop iteration, after the I/O that arrived meanwhile."""

    __slots__ = ("_loop", "_queue", "_scheduled", "per_turn", "ran")

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int = PER_TURN) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn must be >= 1, got {per_turn}")
        self._loop = loop
        self.per_turn = per_turn
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._scheduled = False
        self.ran = 0  # items run so far (tests and the benchmark read it)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on a later turn of the loop, after everything pushed before it."""
        self._queue.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            # call_soon from a callback runs on the next iteration, after that one's poll
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        queue = self._queue
        try:
            for _ in range(self.per_turn):
                if not queue:
                    break
                fn, args = queue.popleft()
                self.ran += 1
                fn(*args)  # an exception goes to the loop's handler, as a callback's would
        finally:
            if queue:
                self._loop.call_soon(self._turn)
            else:
                self._scheduled = False
