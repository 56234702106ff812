"""The control plane and a real gateway process agree on routing tables: the admin endpoint
takes tables only with the per-start token, and a gateway that holds a newer generation than
this host's clock (a clock stepped back) still gets the table, stamped just above it."""

from __future__ import annotations

import time

import httpx
import pytest

from manager import store
from manager.services import serving
from manager.services.context import Platform
from manager.settings import Settings
from manager.system import GatewayProcess
from manager.triton.fleet import TritonFleet
from manager.triton.runtime import ExternalTriton


def test_push_routes_needs_the_token_and_steps_over_a_newer_generation(
    gateway: tuple[Settings, GatewayProcess],
) -> None:
    settings, process = gateway
    url = f"{process.admin_url}/routes"
    assert httpx.get(url, timeout=5).status_code == 401  # no token, no table
    ahead = time.time_ns() // 1_000_000 + 3_600_000  # an hour ahead of this clock
    put = httpx.put(
        url, json={"generation": ahead, "routes": {}}, headers=process.headers, timeout=5
    )
    assert put.status_code == 200, put.text

    engine = store.make_engine(settings.db_url)
    store.init_db(engine)
    platform = Platform(settings=settings, engine=engine)
    platform.triton = TritonFleet([ExternalTriton(f"http://127.0.0.1:{settings.triton_http_port}")])
    platform.gateway_admin_url = process.admin_url
    try:
        platform.gateway_admin_token = "not-the-token"
        with pytest.raises(Exception, match="refused the routing table"):
            serving.push_routes(platform)
        platform.gateway_admin_token = process.token
        serving.push_routes(platform)
    finally:
        engine.dispose()
    table = httpx.get(url, headers=process.headers, timeout=5).json()
    assert table["generation"] == ahead + 1
    # the token lives in a file only this user can read
    assert process.token_path.stat().st_mode & 0o777 == 0o600
