"""A gateway that pulls its routing table (--routes-url): installs what the control plane
serves, sends the token and the ETag, keeps serving its table while the control plane fails
or is unreachable, and refuses what PUT /routes would refuse (a stale generation, an upstream
it may not use). The control plane here is a small stand-in HTTP server (not the subject);
the manager's side is tested end to end in tests/e2e/test_fleet.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import uvloop

from rollout.gateway import parse_args
from tests.unit.test_gateway_harness import FakeTriton, http, infer_body, routes, running_gateway

TOKEN = "pull-token-1234"


class ControlPlane:
    """Serves one table body with an ETag; records what each GET carried."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.seen: list[dict[str, str]] = []
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                plane.seen.append({k.lower(): v for k, v in self.headers.items()})
                etag = f'"{hash(plane.body) & 0xFFFFFF:x}"'
                if self.headers.get("authorization") != f"Bearer {TOKEN}":
                    self._send(401, b'{"detail":"the gateway token is missing or wrong"}')
                elif plane.status != 200:
                    self._send(plane.status, b'{"detail":"broken"}')
                elif self.headers.get("if-none-match") == etag:
                    self._send(304, b"", etag)
                else:
                    self._send(200, plane.body, etag)

            def _send(self, status: int, body: bytes, etag: str | None = None) -> None:
                self.send_response(status)
                if etag:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/gateway/routes"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def plane() -> Iterator[ControlPlane]:
    p = ControlPlane()
    yield p
    p.close()


def test_pulled_tables_are_installed_and_refusals_keep_the_current_one(
    plane: ControlPlane,
) -> None:
    async def main() -> None:
        fake = await FakeTriton().start()
        target = [{"url": fake.url, "model": "m"}]
        plane.body = routes(5, p=target)
        async with running_gateway(
            routes_url=plane.url, routes_token=TOKEN, routes_poll_s=3600
        ) as gw:
            puller = gw.puller
            assert puller is not None
            async with asyncio.timeout(10):  # the first poll runs at start
                while gw.table is None:
                    await asyncio.sleep(0.02)
            assert gw.table.generation == 5 and puller.pulls["installed"] == 1
            answer = await http(gw.ports["http"], "POST", "/v2/models/p/infer", infer_body())
            assert answer.status == 200
            assert plane.seen[-1]["authorization"] == f"Bearer {TOKEN}"

            assert await puller.pull_once() == "unchanged"  # 304 on the ETag
            assert "if-none-match" in plane.seen[-1]

            plane.status = 500  # the control plane fails: the table keeps serving
            plane.body = routes(6, q=target)
            assert await puller.pull_once() == "failed"
            assert gw.table.generation == 5
            plane.status = 200
            assert await puller.pull_once() == "installed"
            assert gw.table.generation == 6 and "default/q" in gw.table.routes

            plane.body = routes(4, p=target)  # older than what serves: refused like a PUT
            assert await puller.pull_once() == "refused"
            assert gw.table.generation == 6

            puller.token = "wrong"
            assert await puller.pull_once() == "failed"
            assert puller.pulls["failed"] == 2
        await fake.stop()

    uvloop.run(main())


def test_an_unreachable_control_plane_and_a_foreign_upstream_leave_the_table_alone(
    plane: ControlPlane,
) -> None:
    async def main() -> None:
        fake = await FakeTriton().start()
        plane.body = routes(2, p=[{"url": "http://10.9.9.9:8000", "model": "m"}])
        allowed = frozenset({("127.0.0.1", int(fake.url.rsplit(":", 1)[1]))})
        async with running_gateway(
            routes_url=plane.url, routes_token=TOKEN, routes_poll_s=3600,
            allowed_upstreams=allowed,
        ) as gw:  # fmt: skip
            assert gw.puller is not None
            assert await gw.puller.pull_once() == "refused"  # not an allowed upstream
            assert gw.table is None
            gw.puller.url = "http://127.0.0.1:9/api/v1/gateway/routes"
            assert await gw.puller.pull_once() == "failed"
        await fake.stop()

    uvloop.run(main())


def test_pull_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    config = parse_args(
        ["--routes-url", "http://m:8080/api/v1/gateway/routes", "--routes-token-file", str(token)]
    )
    assert config.routes_token == TOKEN and config.routes_poll_s == 2.0
    bad = [
        (["--routes-url", "m:8080/routes"], "must be an http:// or https:// URL"),
        (["--routes-token-file", str(token)], "--routes-token-file needs --routes-url"),
        (["--routes-url", "http://m/", "--routes-poll-s", "0"], "--routes-poll-s must be > 0"),
        (["--routes-url", "http://m/", "--routes-token-file", str(tmp_path / "no")],
         "--routes-token-file: cannot read"),
    ]  # fmt: skip
    for argv, message in bad:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err


def test_the_first_poll_runs_at_start(plane: ControlPlane) -> None:
    async def main() -> None:
        fake = await FakeTriton().start()
        plane.body = routes(3, p=[{"url": fake.url, "model": "m"}])
        async with running_gateway(
            routes_url=plane.url, routes_token=TOKEN, routes_poll_s=0.05
        ) as gw:
            async with asyncio.timeout(10):
                while gw.table is None:
                    await asyncio.sleep(0.02)
            assert gw.table.generation == 3
        await fake.stop()

    uvloop.run(main())
