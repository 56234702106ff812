"""Capture segments sent by gateways that share no folder with the manager (--capture-url):
the gateway's real spool writes them, its shipper sends them to the real API over HTTP, and the
manager's capture folder holds them whole, where its summariser reads them. Refusals (token,
name, content, size, a full folder) leave nothing behind and keep the segment at the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.services import data_capture
from manager.settings import Settings
from rollout.capture import HTTP, CaptureSpool, closed_segments, read_segment
from rollout.capture_ship import SegmentShipper
from tests.conftest import make_settings
from tests.integration.api_harness import Api, running_api, served_api

TOKEN = "gateway-token-" + "9" * 24
URL = "/api/v1/gateway/capture"


def _segments(folder: Path, calls: int) -> list[Path]:
    """Closed segments of a real spool that captured ``calls`` calls."""
    spool = CaptureSpool(folder, segment_s=60)
    spool.start()
    for i in range(calls):
        body = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[%d]}]}' % i
        spool.offer("default/p", "p/1", HTTP, [body], -1, [b"{}"], -1)
    spool.stop()
    return closed_segments(folder)


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url, gateway_pull_token=TOKEN)


def _post(api: Api, name: str, body: bytes, token: str = TOKEN) -> object:
    headers = {
        "authorization": f"Bearer {token}",
        "lastmile-segment": name,
        "content-type": "application/octet-stream",
    }
    return api.client.post(URL, content=body, headers=headers)


def test_a_segment_lands_whole_once_and_refusals_leave_nothing(api: Api, tmp_path: Path) -> None:
    (segment,) = _segments(tmp_path / "spool", 3)
    body, folder = segment.read_bytes(), api.settings.capture_dir
    assert _post(api, segment.name, body, token="wrong").status_code == 401  # type: ignore[attr-defined]
    assert _post(api, "../../etc/passwd", body).status_code == 422  # type: ignore[attr-defined]
    assert _post(api, segment.name, b"not a segment").status_code == 422  # type: ignore[attr-defined]
    assert closed_segments(folder) == []
    first = _post(api, segment.name, body)
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]
    assert _post(api, segment.name, body).status_code == 200  # type: ignore[attr-defined]  # resent
    (landed,) = closed_segments(folder)
    assert (
        landed.name == segment.name and [r.route for r in read_segment(landed)] == ["default/p"] * 3
    )
    assert not [p for p in folder.iterdir() if not p.name.endswith(".seg")]  # no temporary left
    # data-plane traffic: the audit log keeps the refusals only
    audit = api.call("GET", "/api/v1/audit", params={"action": f"POST {URL}"}).json()
    assert sorted(e["status"] for e in audit["items"]) == [401, 422, 422]


def test_a_full_folder_and_an_oversized_segment_are_refused(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    segments = _segments(tmp_path / "spool", 1)
    (segment,) = segments
    small = segment.stat().st_size + 10  # room for one segment, not two
    for api in running_api(
        tmp_path / "home", database_url, gateway_pull_token=TOKEN, capture_max_bytes=small
    ):
        assert _post(api, segment.name, segment.read_bytes()).status_code == 201  # type: ignore[attr-defined]
        full = _post(api, "0" * 20 + "-9-x.seg", segment.read_bytes())
        assert full.status_code == 507, full.text  # type: ignore[attr-defined]
        assert "LASTMILE_CAPTURE_MAX_BYTES" in full.json()["detail"]  # type: ignore[attr-defined]
        monkeypatch.setattr(data_capture, "MAX_SEGMENT_BYTES", 100)
        big = _post(api, "1" * 20 + "-9-x.seg", b"LMC1" + b"\0" * 200)
        assert big.status_code == 413  # type: ignore[attr-defined]
        assert len(closed_segments(api.settings.capture_dir)) == 1


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Settings]:
    settings = make_settings(tmp_path / "home", database_url=database_url, gateway_pull_token=TOKEN)
    with served_api(settings) as served:
        yield served


def test_the_shipper_moves_segments_to_the_manager_and_keeps_them_when_it_cannot(
    served: Settings, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    made = _segments(spool, 5)
    url = f"http://127.0.0.1:{served.api_port}{URL}"
    wrong = SegmentShipper(spool, url, "not-the-token")
    assert wrong.ship_once() == 0 and closed_segments(spool) == made
    assert "HTTP 401 (check --routes-token-file)" in (wrong.last_error or "")
    away = SegmentShipper(spool, "http://127.0.0.1:9/api/v1/gateway/capture", TOKEN, timeout_s=2)
    assert away.ship_once() == 0 and closed_segments(spool) == made
    assert "cannot reach" in (away.last_error or "")

    shipper = SegmentShipper(spool, url, TOKEN)
    assert shipper.ship_once() == len(made)
    assert closed_segments(spool) == []  # each deleted once the manager took it
    landed = closed_segments(served.capture_dir)
    assert [p.name for p in landed] == [p.name for p in made]
    assert sum(1 for p in landed for _ in read_segment(p)) == 5
