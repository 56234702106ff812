"""Connections spread evenly over the gateway's processes (rollout.gateway_workers).

Processes that all accept on one listening socket do not share its connections evenly: the
kernel wakes every one of them, and the event loop that gets there first accepts the whole
burst (16 clients opening at once over four processes were seen split 11/2/2/1). The leader
therefore accepts alone (`Acceptor`) and deals each new connection, HTTP or gRPC, to the next
process in turn, itself included: to a follower by passing the socket over a Unix
SOCK_SEQPACKET channel (SCM_RIGHTS; one message per connection, its first byte saying which
protocol), where the follower's `Receiver` serves it as if its own listener had accepted it.
A follower whose channel is full or gone is skipped; the leader serves the connection itself.

The channel is also the follower's lifeline: when the leader is gone the follower reads the
end of it and stops.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.Protocol]
TAGS = {"http": b"h", "grpc": b"g"}
ACCEPT_BURST = 64  # connections accepted per readiness event before other work runs


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(leader's end, follower's end), both non-blocking on the leader's side only."""
    leader, follower = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    leader.setblocking(False)
    follower.set_inheritable(True)
    return leader, follower


def serve_accepted(
    loop: asyncio.AbstractEventLoop, factory: ProtocolFactory, conn: socket.socket
) -> None:
    conn.setblocking(False)
    task = loop.create_task(loop.connect_accepted_socket(factory, conn))
    task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("could not serve an accepted connection: %s", task.exception())


class Acceptor:
    """The leader's accept loop over the data listeners, dealing connections round-robin."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listeners: dict[str, socket.socket],
        factories: dict[str, ProtocolFactory],
        channels: Callable[[], list[socket.socket]],
    ) -> None:
        self.loop = loop
        self.listeners = listeners
        self.factories = factories
        self.channels = channels  # the followers' channels that are up, right now
        self._turn = 0
        self.dealt = 0  # connections passed to followers
        self.kept = 0  # connections served here

    def start(self) -> None:
        for protocol, listener in self.listeners.items():
            listener.setblocking(False)
            self.loop.add_reader(listener.fileno(), self._accept, protocol, listener)

    def close(self) -> None:
        """Accept no more: the listeners close here (a supervisor's copies stay open)."""
        for listener in self.listeners.values():
            self.loop.remove_reader(listener.fileno())
            listener.close()

    def _accept(self, protocol: str, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, ...: the next event retries
                logger.warning("accept on the %s port failed: %s", protocol, exc)
                return
            self._deal(protocol, conn)

    def _deal(self, protocol: str, conn: socket.socket) -> None:
        channels = self.channels()
        self._turn = (self._turn + 1) % (len(channels) + 1)
        if self._turn:
            try:
                socket.send_fds(channels[self._turn - 1], [TAGS[protocol]], [conn.fileno()])
            except OSError as exc:  # full (a stuck follower) or gone: serve it here
                logger.debug("could not pass a connection to a worker: %s", exc)
            else:
                conn.close()
                self.dealt += 1
                return
        self.kept += 1
        serve_accepted(self.loop, self.factories[protocol], conn)


class Receiver:
    """A follower's end: connections from the leader, served by this process."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        channel: socket.socket,
        factories: dict[str, ProtocolFactory],
        on_leader_gone: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.channel = channel
        self.factories = {TAGS[protocol]: factory for protocol, factory in factories.items()}
        self.on_leader_gone = on_leader_gone
        self.received = 0

    def start(self) -> None:
        self.channel.setblocking(False)
        self.loop.add_reader(self.channel.fileno(), self._receive)

    def close(self) -> None:
        if self.channel.fileno() >= 0:
            self.loop.remove_reader(self.channel.fileno())
            self.channel.close()

    def _receive(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                tag, fds, _flags, _ = socket.recv_fds(self.channel, 16, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.error("the channel from the gateway's first process failed: %s", exc)
                tag, fds = b"", []
            if not tag and not fds:  # the leader closed its end: it is gone
                self.close()
                self.on_leader_gone()
                return
            for fd in fds:
                conn = socket.socket(fileno=fd)
                factory = self.factories.get(tag[:1])
                if factory is None or len(fds) != 1:
                    conn.close()  # not something the leader sends
                    continue
                self.received += 1
                serve_accepted(self.loop, factory, conn)
