"""Bad input and browser-borne requests against the real app on SQLite and PostgreSQL: each a
clear 4xx in problem+json, with nothing written."""

from __future__ import annotations

import gzip
import io
import os
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.integration.api_harness import Api, running_api
from tests.onnx_models import make_affine

WS = "/api/v1/workspaces/default"
LIMIT = 1024 * 1024


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(
        tmp_path / "home",
        database_url,
        max_upload_bytes=LIMIT,
        max_archive_bytes=2 * LIMIT,
        max_archive_members=50,
    )


def _nothing_written(api: Api) -> None:
    assert api.call("GET", f"{WS}/models").json()["items"] == []
    assert api.call("GET", f"{WS}/pipelines").json()["items"] == []
    assert list(api.settings.models_dir.iterdir()) == []
    leftovers = [p for p in api.settings.run_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def _problem(r: object, status: int, kind: str | None = None) -> dict:  # type: ignore[type-arg]
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert body["status"] == status and body["detail"]
    if kind:
        assert body["type"] == kind, body
    assert "/tmp/" not in r.text and "Traceback" not in r.text  # type: ignore[attr-defined]
    return body  # type: ignore[no-any-return]


SERVE = """
from manager.api import create_app
from manager.api.server import serve
from manager.settings import Settings
from manager.system import System
settings = Settings()
serve(create_app(settings, system=System(settings, with_runtime=False)), settings)
"""


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_real_server_bounds_body_memory_and_header_time(tmp_path: Path, database_url: str) -> None:
    """A real API process (uvicorn) gets a 64 MiB body without Content-Length against a 1 MiB
    limit: it answers 413 and its peak resident memory grows by far less than the body. A
    client that does not finish its headers in time is disconnected."""
    settings = make_settings(tmp_path / "home", database_url=database_url)
    env = dict(
        os.environ,
        LASTMILE_HOME=str(settings.home),
        LASTMILE_DATABASE_URL=database_url,
        LASTMILE_API_PORT=str(settings.api_port),
        LASTMILE_MAX_UPLOAD_BYTES=str(LIMIT),
    )
    proc = subprocess.Popen([sys.executable, "-c", SERVE], env=env)
    url = f"http://127.0.0.1:{settings.api_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
            time.sleep(0.1)
        key = settings.owner_key_path.read_text().strip()
        headers = {"authorization": f"Bearer {key}", "content-type": "application/octet-stream"}
        chunk = b"\0" * (256 * 1024)

        def body() -> Iterator[bytes]:  # 64 MiB, no Content-Length: only streaming can stop it
            for _ in range(256):
                yield chunk

        before = _peak_rss(proc.pid)
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            try:
                r = client.post(f"{WS}/models/big/versions", content=body())
                status, problem = r.status_code, r.json()
            except httpx.HTTPError:  # the server may close while we still send: that is fine
                status, problem = 413, None
            grown = _peak_rss(proc.pid) - before
            assert status == 413, problem
            if problem is not None:
                assert problem["type"] == "PayloadTooLarge" and "1048576 bytes" in problem["detail"]
            assert grown < 16 * 1024 * 1024, f"peak RSS grew by {grown} bytes: body buffered"
            declared = client.post(f"{WS}/models/big/versions", content=b"x" * (LIMIT + 1))
            assert declared.status_code == 413
            models = client.get(f"{WS}/models").json()["items"]
        assert models == [] and list(settings.models_dir.iterdir()) == []
        assert [p for p in settings.run_dir.iterdir() if p.name.startswith(".")] == []

        with socket.create_connection(("127.0.0.1", settings.api_port), timeout=30) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            started = time.monotonic()
            assert slow.recv(1024) == b""  # closed by the server, not by our 30 s timeout
            assert time.monotonic() - started < 20
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _member(
    name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def _import(api: Api, body: bytes, content_type: str = "application/gzip") -> object:
    return api.call(
        "POST", f"{WS}/repository/import", content=body, headers={"content-type": content_type}
    )


def test_archive_bomb_is_stopped_at_the_extracted_size_limit(api: Api) -> None:
    bomb = _tar_gz([_member("m/1/model.onnx", b"\0" * (20 * 1024 * 1024))])
    assert len(bomb) < 64 * 1024  # a 20 MiB file in a few KiB
    _problem(_import(api, bomb), 413, "PayloadTooLarge")
    _nothing_written(api)


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil.txt"),
        _member("/etc/evil.txt"),
        _member("m/link", kind=tarfile.SYMTYPE, link="/etc/passwd"),
        _member("m/hard", kind=tarfile.LNKTYPE, link="m/config.pbtxt"),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
def test_archive_traversal_and_link_members_are_refused(api: Api, member: tuple) -> None:  # type: ignore[type-arg]
    archive = _tar_gz([_member("m/config.pbtxt", b'name: "m"'), member])
    _problem(_import(api, archive), 422)
    _nothing_written(api)


def test_zip_members_are_checked_and_counted(api: Api) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("../evil.txt", "x")
    _problem(_import(api, buffer.getvalue(), "application/zip"), 422)
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as z:
        for i in range(60):
            z.writestr(f"m/{i}.txt", "x")
    _problem(_import(api, many.getvalue(), "application/zip"), 413, "PayloadTooLarge")
    _problem(_import(api, gzip.compress(b"not a tar")), 422)
    _nothing_written(api)


def test_web_page_shaped_requests_are_refused(api: Api) -> None:
    doc = '{"name": "p", "steps": ["m"]}'
    cases = [
        ({"origin": "https://evil.example", "content-type": "application/json"}, doc, 403),
        ({"content-type": "text/plain"}, doc, 415),
        ({"content-type": "application/x-www-form-urlencoded"}, "name=p", 415),
        ({"host": "evil.example", "content-type": "application/json"}, doc, 403),
        ({"host": "rebind.attacker:8080", "content-type": "application/json"}, doc, 403),
    ]
    for headers, body, status in cases:
        r = api.call("POST", f"{WS}/pipelines", content=body, headers=headers)
        _problem(r, status)
    # the guards apply to reads too: a rebound page cannot read models
    _problem(api.call("GET", f"{WS}/models", headers={"host": "evil.example"}), 403)
    # the API's own origin and configured names are fine
    ok = api.call("GET", f"{WS}/models", headers={"origin": "http://127.0.0.1"})
    assert ok.status_code == 200, ok.text
    _nothing_written(api)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "field"),
    [
        ("GET", f"{WS}/models/m/versions/12345678901234567890", {}, "version"),
        ("GET", f"{WS}/pipelines/p/versions/0", {}, "version"),
        (
            "PUT",
            f"{WS}/models/m/serving",
            {"json": {"max_queue_delay_us": 2**64}},
            "max_queue_delay_us",
        ),
        ("PUT", f"{WS}/models/m/serving", {"json": {"instances": "many"}}, "instances"),
        ("POST", f"{WS}/models/m/versions", {"params": {"rtol": "nan"}}, "rtol"),
        ("POST", f"{WS}/models/m/versions", {"params": {"atol": "inf"}}, "atol"),
        ("POST", f"{WS}/models/m/versions", {"params": {"framework": "caffe"}}, "framework"),
        ("POST", f"{WS}/deployments", {"json": {"pipeline": "p", "version": 2**63}}, "version"),
        ("POST", f"{WS}/deployments", {"json": {"pipeline": "p"}}, "version"),
        ("GET", f"{WS}/models", {"params": {"limit": 10**20}}, "limit"),
        ("GET", f"{WS}/models", {"params": {"cursor": "!!"}}, "cursor"),
    ],
)
def test_numbers_and_enums_out_of_range_are_4xx_naming_the_field(
    api: Api,
    method: str,
    path: str,
    kwargs: dict,
    field: str,  # type: ignore[type-arg]
) -> None:
    if method == "POST" and "versions" in path:
        kwargs = {
            **kwargs,
            "content": b"x",
            "headers": {"content-type": "application/octet-stream"},
        }
    r = api.call(method, path, **kwargs)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in r.json()["detail"], r.json()
    _nothing_written(api)


def test_trust_pickle_needs_the_setting_and_an_admin(api: Api, tmp_path: Path) -> None:
    path = make_affine(tmp_path / "m.onnx", 4)
    params = {"trust_pickle": "true", "framework": "sklearn", "filename": "m.pkl"}
    upload: dict[str, Any] = {"content": path.read_bytes(), "params": params,
              "headers": {"content-type": "application/octet-stream"}}  # fmt: skip
    r = api.call("POST", f"{WS}/models/m/versions", **upload)
    assert "LASTMILE_ALLOW_PICKLE_UPLOADS" in _problem(r, 403, "Forbidden")["hint"]
    _nothing_written(api)
    audit = api.call("GET", "/api/v1/audit").json()["items"]
    assert audit[0]["status"] == 403 and audit[0]["detail"]["problem"] == "Forbidden"

    api.settings.allow_pickle_uploads = True  # the operator turns it on
    editor = api.user("ed", "default", "editor")
    r = api.call("POST", f"{WS}/models/m/versions", editor, **upload)
    assert "admin" in _problem(r, 403, "Forbidden")["detail"]
    _nothing_written(api)
    # an admin gets through to the converter (here the file is no pickle at all), audited
    r = api.call("POST", f"{WS}/models/m/versions", **upload)
    assert r.status_code == 422, r.text
    row = api.call("GET", "/api/v1/audit").json()["items"][0]
    assert row["detail"]["trust_pickle"] is True
    _nothing_written(api)


def test_invalid_names_unknown_routes_and_malformed_definitions(api: Api) -> None:
    _problem(api.call("GET", "/api/v1/workspaces/Bad_Name/models"), 422, "InvalidInput")
    _problem(api.call("GET", "/api/v1/nothing-here"), 404, "NotFound")
    _problem(api.call("PATCH", f"{WS}/models", json={}), 405)
    r = api.call(
        "POST",
        f"{WS}/pipelines",
        content=b"name: p\nsteps: [a, b\n",
        headers={"content-type": "application/yaml"},
    )
    assert "line" in _problem(r, 422)["detail"]
    _problem(
        api.call(
            "POST", f"{WS}/pipelines", content=b"{", headers={"content-type": "application/json"}
        ),
        400,
    )
    _problem(api.call("POST", f"{WS}/pipelines", json=["a"]), 422)
    _problem(api.call("POST", f"{WS}/pipelines", json={"name": "p", "steps": ["ghost"]}), 404)
    _nothing_written(api)
