"""Webhook delivery of assay alerts: signed JSON POSTs, retried with backoff.

An alert whose ``delivery`` is "pending" and whose ``next_attempt_at`` has come is POSTed to
its assay's ``webhook_url``. A 2xx delivers it; a 4xx other than 408/429 fails it for good;
anything else (3xx: redirects are never followed, 5xx, 408/429, connection error, timeout)
is retried after ``BACKOFF_S[attempts - 1]`` seconds, and after ``MAX_ATTEMPTS`` failed
attempts it is "failed". Each alert's outcome is committed on its own, and no transaction is
held open while a request is in flight.

Receivers authenticate a request with ``verify``: the ``lastmile-signature`` header is
``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`` under the assay's webhook secret,
so a captured request cannot be replayed once it is older than the tolerance. The
``lastmile-delivery`` header (the alert id) lets a receiver drop a delivery it already has
(a request that succeeded but whose answer was lost is sent again).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager import store
from manager.errors import InvalidInput
from manager.services.lookups import as_utc
from manager.store import Alert, Assay, AssayResult

SIGNATURE_HEADER = "lastmile-signature"
DELIVERY_HEADER = "lastmile-delivery"
BACKOFF_S = (5, 15, 60, 300, 900)
MAX_ATTEMPTS = len(BACKOFF_S)
MAX_URL_LENGTH = 2048
_HINT = "give the full URL of the receiver, e.g. https://hooks.example.com/lastmile"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, *, now: float | datetime, tolerance_s: float = 300
) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` and is at most ``tolerance_s``
    away from ``now`` (unix seconds or a datetime). Any ``v1`` entry may match (rotation)."""
    fields: dict[str, list[str]] = {"t": [], "v1": []}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    stamps, sigs = fields["t"], fields["v1"]
    if len(stamps) != 1 or not (stamps[0].isascii() and stamps[0].isdigit()) or not sigs:
        return False
    clock = now.timestamp() if isinstance(now, datetime) else now
    if abs(clock - int(stamps[0])) > tolerance_s:
        return False
    expected = sign(secret, int(stamps[0]), body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected.encode(), sig.encode()) for sig in sigs)


def validate_webhook_url(url: str) -> str:
    """The URL when it is an http(s) URL with a host and no credentials; else InvalidInput.
    Messages never repeat the URL (its path or query may hold a token)."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(
            f"webhook URL is {len(url)} characters long, over {MAX_URL_LENGTH}", hint=_HINT
        )
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise InvalidInput("webhook URL holds spaces or control characters", hint=_HINT)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidInput(f"webhook URL cannot be parsed: {exc}", hint=_HINT) from None
    if parts.scheme.lower() not in ("http", "https"):
        what = f"scheme {parts.scheme!r} is not" if parts.scheme else "has no scheme,"
        raise InvalidInput(f"webhook URL {what} http or https", hint=_HINT)
    if not parts.hostname:
        raise InvalidInput("webhook URL has no host", hint=_HINT)
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "webhook URL holds credentials (user:password@)",
            hint="drop them from the URL; set a webhook secret and check the "
            f"{SIGNATURE_HEADER} header in the receiver instead",
        )
    return url


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else as_utc(dt).isoformat()


def payload(
    alert: Alert, assay: Assay, result: AssayResult, *, workspace: str, pipeline: str
) -> dict[str, Any]:
    return {
        "id": alert.id,
        "status": alert.status,
        "message": alert.message,
        "action": alert.action,
        "assay": {
            "name": assay.name,
            "kind": assay.kind,
            "metric": assay.metric,
            "warning": assay.warning,
            "alert": assay.alert,
        },
        "workspace": workspace,
        "pipeline": pipeline,
        "version": assay.version,
        "window": {"start": _iso(result.window_start), "end": _iso(result.window_end)},
        "score": result.score,
        "created_at": _iso(alert.created_at),
    }


def _job(session: Session, alert: Alert) -> tuple[int, str, str, bytes]:
    """(alert id, URL, secret, body) read inside the session, sent after it is closed."""
    assay = session.get(Assay, alert.assay_id)
    result = session.get(AssayResult, alert.result_id)
    if assay is None or result is None:  # deleted under us: nothing to tell
        return (alert.id or 0, "", "", b"")
    ws = session.get(store.Workspace, assay.workspace_id)
    pl = session.get(store.Pipeline, assay.pipeline_id)
    body = payload(
        alert, assay, result, workspace=ws.name if ws else "", pipeline=pl.name if pl else ""
    )
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return (alert.id or 0, assay.webhook_url or "", assay.webhook_secret or "", data)


def _post(
    client: httpx.Client, job: tuple[int, str, str, bytes], timeout_s: float
) -> tuple[str, str | None]:
    """("delivered" | "retrying" | "failed", last_error) of one attempt."""
    alert_id, url, secret, body = job
    if not url:
        return "failed", "the assay has no webhook URL"
    try:
        validate_webhook_url(url)
    except InvalidInput as exc:
        return "failed", f"{exc.message} (permanent; fix the assay's webhook URL)"
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "lastmile-alerts",
        DELIVERY_HEADER: str(alert_id),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), body)
    try:  # stream: the answer's status is all we need, its body is never read
        with client.stream(
            "POST", url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False
        ) as resp:
            code = resp.status_code
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as exc:
        text = f"{type(exc).__name__}: {exc}".rstrip(": ")
        for private in (url, secret):
            text = text.replace(private, "<redacted>") if private else text
        return "retrying", text[:300]
    if 200 <= code < 300:
        return "delivered", None
    if 400 <= code < 500 and code not in (408, 429):
        return "failed", f"HTTP {code} (permanent: the receiver refused it, retrying cannot help)"
    if 300 <= code < 400:
        return "retrying", f"HTTP {code} (redirects are not followed; use the final URL)"
    return "retrying", f"HTTP {code}"


def deliver_due(
    engine: Engine,
    *,
    now: datetime | None = None,
    client: httpx.Client | None = None,
    timeout_s: float = 5.0,
    limit: int = 100,
) -> dict[str, int]:
    """One pass over the alerts due at ``now`` (at most ``limit``, oldest first); returns
    how many were delivered, will be retried, and failed for good in this pass."""
    clock = as_utc(now) if now is not None else store.utcnow()
    counts = {"delivered": 0, "retrying": 0, "failed": 0}
    with Session(engine) as session:
        jobs = [
            _job(session, a) for a in store.due_alert_deliveries(session, now=clock, limit=limit)
        ]
    http = client if client is not None else httpx.Client()
    try:
        for job in jobs:
            outcome, error = _post(http, job, timeout_s)
            with Session(engine) as session:
                alert = session.get(Alert, job[0])
                if alert is None or alert.delivery != "pending":
                    continue  # deleted or handled by another pass meanwhile
                alert.attempts += 1
                alert.last_error = error
                if outcome == "retrying" and alert.attempts >= MAX_ATTEMPTS:
                    outcome = "failed"
                    alert.last_error = f"{error}; gave up after {alert.attempts} attempts"
                if outcome == "delivered":
                    alert.delivery, alert.delivered_at = "delivered", clock
                elif outcome == "failed":
                    alert.delivery = "failed"
                else:
                    delay = BACKOFF_S[alert.attempts - 1]
                    alert.next_attempt_at = clock + timedelta(seconds=delay)
                session.add(alert)
                session.commit()
            counts[outcome] += 1
    finally:
        if client is None:
            http.close()
    return counts
