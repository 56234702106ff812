"""What a complete HTTP request becomes: a local answer, or a route, a variant and a target.

Addressing: clients name the pipeline (``/v2/models/fraud/infer``); the workspace comes from
the ``/w/<workspace>`` path prefix (``/w/teamb/v2/models/fraud/infer``, also for health and
server metadata) or the ``lastmile-workspace`` header, else ``default``; a prefix and a header
that disagree are a 400. ``/versions/N`` selects the variant serving pipeline version N; without
it the route's strategy picks (rollout.strategies), with a sticky key from the route's header or
request parameter. Shadow copies go out after the primary (rollout.http_shadow).

Per model: infer (POST), ready, metadata and config (GET, or HEAD: the GET's status and headers
without a body, rollout.exchange). A config is the variant's target's (an ensemble), cut down to
its public interface (rollout.public_config).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from rollout.body_guard import (
    INLINE_INFLATE_BYTES,
    BodyRefused,
    Inflater,
    check_infer_body,
    content_coding,
    unsupported_coding,
)
from rollout.exchange import (
    CONFIG,
    INFER,
    INFERENCE_HEADER_LENGTH,
    META,
    READY,
    VERSION_RE,
    Exchange,
    infer_payload,
)
from rollout.gateway_metrics import UNKNOWN_ROUTE
from rollout.http_routing import (
    WORKSPACE_HEADER_BYTES,
    CompiledRoute,
    CompiledTarget,
    CompiledVariant,
    sticky_key,
)

if TYPE_CHECKING:
    from rollout.proxy import ClientConnection, Request
    from rollout.routing import Mirror

logger = logging.getLogger(__name__)


def dispatch(client: ClientConnection, req: Request) -> None:
    """Answer `req` (the connection's current request): locally, or through an Exchange."""
    url = req.url
    query = url.find(b"?")
    path = url if query < 0 else url[:query]
    workspace = None
    if path.startswith(b"/w/"):  # a workspace's path prefix: /w/<workspace>/v2/...
        slash = path.find(b"/", 3)
        workspace = path[3:slash] if slash > 3 else b""
        path = path[slash:] if slash > 3 else b""
    parts = path.split(b"/")
    if len(parts) >= 4 and parts[0] == b"" and parts[1] == b"v2" and parts[2] == b"models":
        _handle_model(client, req, parts, workspace)
        return
    gw = client.gw
    if path not in (b"/v2/health/live", b"/v2/health/ready", b"/v2", b"/v2/"):
        client.error(
            404, "not found: the gateway serves inference, model metadata and config, and health"
        )
    elif req.method != b"GET" and req.method != b"HEAD":
        client.not_allowed(b"GET, HEAD")
    elif path == b"/v2/health/live":
        client.respond(200)
    elif path == b"/v2/health/ready":
        client.respond(200 if gw.is_ready() else 503)
    else:
        client.respond(200, gw.server_metadata)


def _handle_model(
    client: ClientConnection, req: Request, parts: list[bytes], workspace: bytes | None
) -> None:
    name = parts[3]
    rest = parts[4:]
    version = b""
    if len(rest) >= 2 and rest[0] == b"versions":
        version = rest[1]
        rest = rest[2:]
        if not VERSION_RE.fullmatch(version):
            client.error(400, "invalid model version: use a positive integer")
            return
    if not rest:
        kind, method, suffix = META, b"GET", b""
    elif len(rest) == 1 and rest[0] == b"infer":
        kind, method, suffix = INFER, b"POST", b"/infer"
    elif len(rest) == 1 and rest[0] == b"ready":
        kind, method, suffix = READY, b"GET", b"/ready"
    elif len(rest) == 1 and rest[0] == b"config":
        kind, method, suffix = CONFIG, b"GET", b"/config"
    else:
        client.error(
            404, "not found: the gateway serves infer, ready, metadata and config per model"
        )
        return
    head_only = req.method == b"HEAD" and method == b"GET"
    if req.method != method and not head_only:
        client.not_allowed(b"POST" if method == b"POST" else b"GET, HEAD")
        return
    for hname, hvalue in req.captured:
        if hname == WORKSPACE_HEADER_BYTES and hvalue:  # an empty header is no header
            if workspace is not None and hvalue != workspace:
                client.error(400, _workspace_conflict(workspace, hvalue))
                return
            workspace = hvalue
    stats = client.gw.stats
    route = client.gw.routing.resolve(name, workspace)
    if route is None:
        if kind == INFER:
            stats.count(UNKNOWN_ROUTE, "", "http", 404)
        client.error(404, f"unknown model {_shown(name)!r}")
        return
    variant = None
    if version:
        variant = route.by_version.get(version)
        if variant is None:
            if kind == INFER:
                stats.count(route.key, "", "http", 404)
            shown = version.decode()
            client.error(404, f"model {route.public!r} has no version {shown} being served")
            return
    if kind != INFER:
        if variant is None:
            key = sticky_key(route, req.captured) if route.sticky_header else None
            variant = route.variants[route.decide(key).primary.name]
        target = variant.pick()
        line = b"GET " + target.path + suffix + b" HTTP/1.1\r\n" + target.host_line + b"\r\n"
        _submit(client, kind, route, variant, target, [line], head_only)
    elif req.coding:
        coding = content_coding(req.coding)
        if coding is None:
            _refuse(client, route, 415, unsupported_coding(req.coding))
        elif coding:
            _inflate(client, req, route, variant, coding)
        else:
            _forward_infer(client, req, route, variant)
    else:
        _forward_infer(client, req, route, variant)


def _forward_infer(
    client: ClientConnection, req: Request, route: CompiledRoute, variant: CompiledVariant | None
) -> None:
    header_length = None
    for hname, hvalue in req.headers:
        if len(hname) == 31 and hname.lower() == INFERENCE_HEADER_LENGTH:
            try:
                header_length = int(hvalue)
            except ValueError:
                _refuse(client, route, 400, "invalid Inference-Header-Content-Length")
                return
    problem = check_infer_body(req.body, req.body_size, header_length)
    if problem is not None:
        _refuse(client, route, 400, problem)
        return
    mirrors: tuple[Mirror, ...] = ()
    if variant is None:
        key = None
        if route.sticky_header:  # parse the body only for a sticky route without its header
            key = sticky_key(route, req.captured, req.body, header_length)
        decision = route.decide(key)
        variant = route.variants[decision.primary.name]
        mirrors = decision.mirrors
    target = variant.pick()
    payload = infer_payload(target, req.headers, req.body, req.body_size)
    ex = _submit(client, INFER, route, variant, target, payload)
    sampler = route.capture
    if sampler is not None and client.gw.capture is not None and sampler.take():
        ex.captured_request = (req.body, -1 if header_length is None else header_length)
        if ex.capture is None:
            ex.capture = []
    if mirrors:  # after the primary: a copy never goes out ahead of the client's request
        gw = client.gw
        group = gw.mirrors.launch(route, mirrors, req.headers, req.body, req.body_size)
        if group is not None:
            ex.group = group
            if ex.capture is None:
                ex.capture = []


def _submit(
    client: ClientConnection,
    kind: int,
    route: CompiledRoute,
    variant: CompiledVariant,
    target: CompiledTarget,
    payload: list[bytes],
    head_only: bool = False,
) -> Exchange:
    gw = client.gw
    start = gw.loop.time()
    ex = Exchange(client, kind, route, variant, target, payload, start, head_only=head_only)
    client.ex = ex
    if kind == INFER:
        gw.stats.enter(route.key, variant.name)
    target.pool.submit(ex)
    return ex


def _refuse(client: ClientConnection, route: CompiledRoute, status: int, message: str) -> None:
    """Answer an inference request the gateway will not forward (counted, variant '')."""
    client.gw.stats.count(route.key, "", "http", status)
    client.error(status, message)


# -- compressed bodies ----------------------------------------------------------------------
def _inflate(
    client: ClientConnection,
    req: Request,
    route: CompiledRoute,
    variant: CompiledVariant | None,
    coding: bytes,
) -> None:
    inflater = Inflater(coding, req.body, client.gw.config.max_inflated_bytes)
    try:
        done = inflater.run(INLINE_INFLATE_BYTES)
    except BodyRefused as exc:
        _refuse(client, route, exc.status, exc.message)
        return
    if done:
        _inflated(client, req, route, variant, inflater)
        return
    # Big: the rest in a worker thread (zlib drops the GIL), the connection stays busy.
    future = client.gw.loop.run_in_executor(None, inflater.run)
    future.add_done_callback(lambda f: _inflate_done(client, f, req, route, variant, inflater))


def _inflate_done(
    client: ClientConnection,
    future: asyncio.Future[bool],
    req: Request,
    route: CompiledRoute,
    variant: CompiledVariant | None,
    inflater: Inflater,
) -> None:
    if client.closed or future.cancelled():
        return  # client gone (or gateway stopping): nothing to answer
    exc = future.exception()
    if isinstance(exc, BodyRefused):
        _refuse(client, route, exc.status, exc.message)
    elif exc is not None:
        logger.error("inflating a request body failed", exc_info=exc)
        _refuse(client, route, 500, "the gateway could not inflate the request body")
    else:
        _inflated(client, req, route, variant, inflater)


def _inflated(
    client: ClientConnection,
    req: Request,
    route: CompiledRoute,
    variant: CompiledVariant | None,
    inflater: Inflater,
) -> None:
    body = inflater.result()
    req.body = [body] if body else []
    req.body_size = len(body)
    req.coding = b""
    _forward_infer(client, req, route, variant)


def _shown(name: bytes) -> str:
    return name[:64].decode("utf-8", "replace")


def _workspace_conflict(path: bytes, header: bytes) -> str:
    return (
        f"the path names workspace {_shown(path)!r} but the lastmile-workspace header names "
        f"{_shown(header)!r}: send one of them"
    )
