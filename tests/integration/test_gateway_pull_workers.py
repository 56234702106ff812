"""A gateway run as a Kubernetes pod runs it: several processes (--workers 2) that pull their
routing table from the control plane (--routes-url, with the token) and answer the admin API
only with that token. Every process serves the pulled table, and a new generation reaches all
of them. The gateway is the real `python -m rollout.gateway`; the control plane and Triton are
stand-ins (tests/unit/test_gateway_routes_pull.py's and the harness's), not the subject.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from tests.unit.test_gateway_harness import FakeTriton, http, infer_body, routes, samples
from tests.unit.test_gateway_routes_pull import TOKEN, ControlPlane

REPO = Path(__file__).resolve().parents[2]


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    p = ControlPlane()
    yield p
    p.close()


async def _until(what: str, check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = await check()
        except (OSError, httpx.HTTPError, ConnectionError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def test_every_gateway_process_serves_the_pulled_table_and_its_next_generation(
    plane: ControlPlane, tmp_path: Path
) -> None:
    token_file = tmp_path / "gateway-token"
    token_file.write_text(TOKEN + "\n")
    http_port, metrics_port, admin_port = _free_ports(3)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def main() -> None:
        fake = await FakeTriton().start()
        plane.body = routes(1, p=[{"url": fake.url, "model": "p.v1"}])
        proc = subprocess.Popen(
            [sys.executable, "-m", "rollout.gateway", "--host", "127.0.0.1",
             f"--http-port={http_port}", "--grpc-port=0", f"--metrics-port={metrics_port}",
             f"--admin-port={admin_port}", f"--routes-url={plane.url}",
             f"--routes-token-file={token_file}", f"--admin-token-file={token_file}",
             "--routes-poll-s=0.2", f"--capture-dir={tmp_path / 'capture'}", "--workers=2"],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(timeout=5) as admin:

                async def workers_up() -> list[dict[str, Any]] | None:
                    got = await admin.get(f"http://127.0.0.1:{admin_port}/workers", headers=auth)
                    listed: list[dict[str, Any]] = got.json()["workers"]
                    return listed if [w["state"] for w in listed] == ["up", "up"] else None

                async def generation() -> int:
                    got = await admin.get(f"http://127.0.0.1:{admin_port}/routes", headers=auth)
                    return int(got.json()["generation"]) if got.status_code == 200 else 0

                workers = await _until("both gateway processes up", workers_up)
                assert await _until("the pulled table", generation) == 1
                # the admin API answers only with the token
                refused = await admin.get(f"http://127.0.0.1:{admin_port}/workers")
                assert refused.status_code == 401

                async def variants(count: int) -> list[str]:
                    """`count` inferences, each on a connection of its own (dealt in turn)."""
                    seen = []
                    for _ in range(count):
                        reply = await http(http_port, "POST", "/v2/models/p/infer", infer_body())
                        assert reply.status == 200, reply.body
                        seen.append(reply.headers["lastmile-variant"])
                    return seen

                assert set(await variants(8)) == {"p/1"}
                follower = workers[1]
                text = (
                    await admin.get(f"http://127.0.0.1:{follower['metrics_port']}/metrics")
                ).text
                served = sum(
                    v for (name, _), v in samples(text).items()
                    if name == "lastmile_gateway_requests_total"
                )  # fmt: skip
                assert 1 <= served < 8  # the follower served some, the first process the rest

                plane.body = routes(2, p=[{"url": fake.url, "model": "p.v2"}])
                assert await _until("generation 2", lambda: _at_least(generation, 2)) == 2
                # the first process reports it installed only once every process serves it:
                # 8 fresh connections, dealt to both, all reach the new target model
                assert set(await variants(8)) == {"p/1"}
                models = {r.path.split("/")[3] for r in fake.infers[-8:]}
                assert models == {"p.v2"}
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
            await fake.stop()
        assert proc.returncode == 0, err.decode()[-2000:]

    uvloop.run(main())


async def _at_least(get: Any, value: int) -> int | None:
    got: int = await get()
    return got if got >= value else None
