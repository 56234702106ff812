"""The routing table for gateways that pull it (``python -m rollout.gateway --routes-url``):
replicas on a cluster, which the control plane cannot reach on their loopback admin port.

Not an API-key route: a gateway holds LASTMILE_GATEWAY_PULL_TOKEN, which lets it read the
table and nothing else. The answer carries an ETag; a gateway that sends it back in
If-None-Match gets 304 while nothing changed. One build of the table answers every poll
within a second (``serving.PulledTable``): a change reaches the gateways within a second plus
their poll interval.

The same token lets such a gateway send its capture segments (``--capture-url``,
rollout.capture_ship) into the manager's capture folder, where the summariser reads them."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from manager.api.deps import PlatformDep
from manager.api.routes import problems
from manager.errors import InvalidInput, PayloadTooLarge, Unauthenticated
from manager.services import data_capture, serving

router = APIRouter(tags=["gateway"])


def _pulled(request: Request) -> serving.PulledTable:
    """This app's table cache: one per API process, shared by every pulling gateway."""
    state = request.app.state
    if not hasattr(state, "pulled_table"):
        state.pulled_table = serving.PulledTable()
    table: serving.PulledTable = state.pulled_table
    return table


def _check_token(expected: str | None, authorization: str | None) -> None:
    if expected is None:
        raise Unauthenticated(
            "this manager gives its routing table to no gateway",
            hint="set LASTMILE_GATEWAY_PULL_TOKEN on the manager and give the same token to "
            "the gateways (--routes-token-file)",
        )
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8", "replace"), expected.encode()
    ):
        raise Unauthenticated(
            "the gateway token is missing or wrong",
            hint="send LASTMILE_GATEWAY_PULL_TOKEN as 'Authorization: Bearer TOKEN'",
        )


@router.get(
    "/api/v1/gateway/routes",
    summary="The routing table, for gateways that pull it (gateway token, not an API key)",
    responses={
        200: {"description": "the routing table (rollout.routing JSON)"},
        304: {"description": "unchanged since the ETag sent in If-None-Match"},
        **problems(401),
    },
)
async def gateway_routes(
    request: Request,
    platform: PlatformDep,
    authorization: Annotated[str | None, Header()] = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    secret = platform.settings.gateway_pull_token
    _check_token(secret.get_secret_value() if secret is not None else None, authorization)
    body, etag = await run_in_threadpool(_pulled(request).get, platform)
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


@router.post(
    "/api/v1/gateway/capture",
    summary="A capture segment from a gateway that shares no folder with the manager "
    "(gateway token, not an API key)",
    status_code=201,
    responses={
        200: {"description": "the segment was here already (a resend)"},
        201: {"description": "the segment is in the capture folder"},
        **problems(401, 413, 422, 507),
    },
)
async def gateway_capture(
    request: Request,
    platform: PlatformDep,
    authorization: Annotated[str | None, Header()] = None,
    lastmile_segment: Annotated[str | None, Header()] = None,
) -> Response:
    secret = platform.settings.gateway_pull_token
    _check_token(secret.get_secret_value() if secret is not None else None, authorization)
    if not lastmile_segment:
        raise InvalidInput(
            "no Lastmile-Segment header", hint="name the segment as the gateway's spool did"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > data_capture.MAX_SEGMENT_BYTES:
            raise PayloadTooLarge(
                f"a capture segment may hold {data_capture.MAX_SEGMENT_BYTES} bytes",
                hint="the gateway's spool closes segments long before that",
            )
    new = await run_in_threadpool(
        data_capture.receive_segment, platform, name=lastmile_segment, body=bytes(body)
    )
    return Response(status_code=201 if new else 200)
