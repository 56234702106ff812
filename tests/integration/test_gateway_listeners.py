"""The gateway's data ports outlive its process: the manager makes the HTTP and gRPC listening
sockets and hands them down (--http-fd, --grpc-fd), so while the watchdog restarts a gateway,
clients that connect wait in the kernel's backlog instead of being refused, and the next
gateway process answers them. A real gateway process throughout; no Triton is needed."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import tritonclient.grpc as grpcclient

from manager.settings import Settings
from manager.system import GatewayProcess
from tests.conftest import make_settings

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, stream 0


def _recv_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_clients_that_connect_while_the_gateway_restarts_are_answered_by_the_next_one(
    gateway: tuple[Settings, GatewayProcess],
) -> None:
    settings, process = gateway
    first_pid = process.pid
    process.stop()  # the process is gone; the listening sockets stay with the manager
    assert process.exit_code() is None and process.pid is None
    http = socket.create_connection(("127.0.0.1", settings.gateway_http_port), timeout=30)
    grpc_conn = socket.create_connection(("127.0.0.1", settings.gateway_grpc_port), timeout=30)
    with http, grpc_conn:
        # both connected (no gateway runs to refuse them): requests wait in the socket buffers
        http.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
        grpc_conn.sendall(PREFACE + EMPTY_SETTINGS)
        process.start()
        assert process.pid is not None and process.pid != first_pid
        assert _recv_until(http, lambda d: b"\r\n\r\n" in d).startswith(b"HTTP/1.1 200")
        # the new gateway's HTTP/2 server speaks first after the preface: its SETTINGS frame
        head = _recv_until(grpc_conn, lambda d: len(d) >= 9)[:9]
        assert len(head) == 9 and head[3] == 0x4 and head[5:9] == b"\x00\x00\x00\x00", head
    # and a real gRPC client is served on the handed-down port
    with grpcclient.InferenceServerClient(f"127.0.0.1:{settings.gateway_grpc_port}") as client:
        assert client.is_server_live()


def _gone(pid: int) -> bool:
    """Exited (a zombie counts: nothing of it runs)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_worker_processes_go_with_a_killed_first_process_and_the_next_starts_them_again(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "home", gateway_workers=3)
    settings.ensure_dirs()
    process = GatewayProcess(settings, upstreams=[f"127.0.0.1:{settings.triton_http_port}"])
    process.start()
    try:
        workers = process.workers()
        assert [w["state"] for w in workers] == ["up"] * 3
        assert process._proc is not None
        process._proc.kill()  # SIGKILL: the first process cannot tell the others
        process._proc.wait()
        for worker in workers[1:]:  # they read the end of their channel and stop
            deadline = time.monotonic() + 30
            while not _gone(worker["pid"]):
                assert time.monotonic() < deadline, f"worker {worker} still runs"
                time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", settings.gateway_http_port), timeout=30) as c:
            c.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
            process.start()  # the next first process, on the manager's sockets
            assert _recv_until(c, lambda d: b"\r\n\r\n" in d).startswith(b"HTTP/1.1 200")
        again = process.workers()
        assert [w["state"] for w in again] == ["up"] * 3
        assert not {w["pid"] for w in again} & {w["pid"] for w in workers}
    finally:
        process.close()
