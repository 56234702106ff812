"""Webhook delivery of assay alerts against a real local HTTP receiver, on both stores."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager import store
from manager.errors import InvalidInput
from manager.services import alert_delivery as ad

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
SECRET = "whsec-4f1c9a"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Records every request; answers 200 unless told otherwise per path: an HTTP status, or
    "hang" (answer nothing until `release` is set)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answers: dict[str, list[int | str]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size)
                with receiver.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.seen.append(Seen(self.command, self.path, headers, body))
                    queue = receiver.answers.get(self.path) or []
                    answer = queue.pop(0) if queue else 200
                if answer == "hang":
                    receiver.release.wait(30)
                    return
                self.send_response(int(answer))
                if answer == 302:
                    self.send_header("Location", "/target")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = _handle
            do_GET = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def answer(self, path: str, *answers: int | str) -> None:
        with self.lock:
            self.answers[path] = list(answers)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    try:
        yield rec
    finally:
        rec.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def make_alert(
    engine: Engine,
    url: str | None,
    *,
    assay: str = "drift-amount",
    secret: str | None = SECRET,
    next_attempt_at: datetime = T0,
) -> int:
    with Session(engine) as s:
        ws = store.ensure_workspace(s, name="risk")
        assert ws.id is not None
        pipeline = store.find_pipeline(s, workspace=ws, name="fraud")
        if pipeline is None:
            pipeline = store.Pipeline(workspace_id=ws.id, name="fraud")
            s.add(pipeline)
            s.flush()
        assert pipeline.id is not None
        row = store.add_assay(
            s,
            store.Assay(
                workspace_id=ws.id, pipeline_id=pipeline.id, name=assay, kind="drift",
                window_s=60, interval_s=60, metric="psi", warning=0.1, alert=0.25, version=2,
                webhook_url=url, webhook_secret=secret,
            ),
        )  # fmt: skip
        assert row.id is not None
        result = store.save_assay_result(
            s,
            store.AssayResult(
                assay_id=row.id, window_start=T0 - timedelta(seconds=60), window_end=T0,
                score=0.31, status="alert", count=500,
            ),
        )  # fmt: skip
        assert result.id is not None
        alert = store.add_alert(
            s,
            store.Alert(
                assay_id=row.id, result_id=result.id, status="alert",
                message="psi 0.31 is over the alert threshold 0.25", action="rollout paused",
                delivery="pending", next_attempt_at=next_attempt_at, created_at=T0,
            ),
        )  # fmt: skip
        s.commit()
        assert alert.id is not None
        return alert.id


def get_alert(engine: Engine, alert_id: int) -> store.Alert:
    with Session(engine) as s:
        alert = s.get(store.Alert, alert_id)
        assert alert is not None
        return alert


def utc(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.replace(tzinfo=timezone.utc)


def test_delivered_signed_and_verifiable(engine: Engine, receiver: Receiver) -> None:
    alert_id = make_alert(engine, receiver.url())
    assert ad.deliver_due(engine, now=T0) == {"delivered": 1, "retrying": 0, "failed": 0}
    alert = get_alert(engine, alert_id)
    assert (alert.delivery, alert.attempts, alert.last_error) == ("delivered", 1, None)
    assert utc(alert.delivered_at) == T0
    [req] = receiver.seen
    assert (req.method, req.path) == ("POST", "/hook")
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == "lastmile-alerts"
    assert req.headers["lastmile-delivery"] == str(alert_id)
    header = req.headers[ad.SIGNATURE_HEADER]
    now = time.time()
    assert ad.verify(SECRET, header, req.body, now=now)
    assert ad.verify(SECRET, header, req.body, now=datetime.now(timezone.utc))
    assert not ad.verify(SECRET, header, req.body.replace(b"0.31", b"0.01"), now=now)
    assert not ad.verify("another-secret", header, req.body, now=now)
    # the tolerance, measured from the signature's own second (not from a clock that moved on)
    signed = int(dict(p.split("=", 1) for p in header.split(","))["t"])
    assert abs(signed - now) < 60
    assert ad.verify(SECRET, header, req.body, now=signed + 300)
    assert ad.verify(SECRET, header, req.body, now=signed - 300)
    assert not ad.verify(SECRET, header, req.body, now=signed + 301)  # stale: a replay
    assert not ad.verify(SECRET, header, req.body, now=signed - 301)  # from the future
    # the next pass sends nothing more
    assert ad.deliver_due(engine, now=T0 + timedelta(hours=1))["delivered"] == 0
    assert len(receiver.seen) == 1


def test_sign_is_the_stripe_style_scheme() -> None:
    body = b'{"a":1}'
    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert ad.sign("k", 1700000000, body) == f"t=1700000000,v1={mac}"
    good = f"t=1700000000,v1={'0' * 64},v1={mac}"  # a rotated secret: any v1 may match
    assert ad.verify("k", good, body, now=1700000100)
    for bad in ("", "v1=" + mac, "t=1700000000", f"t=abc,v1={mac}", f"t=²,v1={mac}"):
        assert not ad.verify("k", bad, body, now=1700000000), bad
    assert not ad.verify("k", f"t=1700000000,t=1700000000,v1={mac}", body, now=1700000000)


def test_payload_fields(engine: Engine, receiver: Receiver) -> None:
    alert_id = make_alert(engine, receiver.url(), secret=None)
    ad.deliver_due(engine, now=T0)
    [req] = receiver.seen
    assert ad.SIGNATURE_HEADER not in req.headers  # no secret, no signature
    assert json.loads(req.body) == {
        "id": alert_id,
        "status": "alert",
        "message": "psi 0.31 is over the alert threshold 0.25",
        "action": "rollout paused",
        "assay": {
            "name": "drift-amount",
            "kind": "drift",
            "metric": "psi",
            "warning": 0.1,
            "alert": 0.25,
        },
        "workspace": "risk",
        "pipeline": "fraud",
        "version": 2,
        "window": {"start": "2030-01-01T11:59:00+00:00", "end": "2030-01-01T12:00:00+00:00"},
        "score": 0.31,
        "created_at": "2030-01-01T12:00:00+00:00",
    }


def test_retry_after_503_then_delivered(engine: Engine, receiver: Receiver) -> None:
    receiver.answer("/hook", 503)
    alert_id = make_alert(engine, receiver.url())
    assert ad.deliver_due(engine, now=T0) == {"delivered": 0, "retrying": 1, "failed": 0}
    alert = get_alert(engine, alert_id)
    assert (alert.delivery, alert.attempts, alert.last_error) == ("pending", 1, "HTTP 503")
    assert utc(alert.next_attempt_at) == T0 + timedelta(seconds=ad.BACKOFF_S[0])
    # before the backoff has passed: nothing is sent
    assert ad.deliver_due(engine, now=T0 + timedelta(seconds=4)) == {
        "delivered": 0, "retrying": 0, "failed": 0,
    }  # fmt: skip
    assert len(receiver.seen) == 1
    later = T0 + timedelta(seconds=5)
    assert ad.deliver_due(engine, now=later) == {"delivered": 1, "retrying": 0, "failed": 0}
    alert = get_alert(engine, alert_id)
    assert (alert.delivery, alert.attempts, alert.last_error) == ("delivered", 2, None)
    assert utc(alert.delivered_at) == later
    assert len(receiver.seen) == 2
    assert (
        receiver.seen[0].headers["lastmile-delivery"]
        == receiver.seen[1].headers["lastmile-delivery"]
    )


def test_not_due_yet_is_not_sent(engine: Engine, receiver: Receiver) -> None:
    alert_id = make_alert(engine, receiver.url(), next_attempt_at=T0 + timedelta(minutes=1))
    assert ad.deliver_due(engine, now=T0) == {"delivered": 0, "retrying": 0, "failed": 0}
    assert receiver.seen == []
    assert get_alert(engine, alert_id).attempts == 0


def test_exhausted_attempts_fail_for_good(engine: Engine, receiver: Receiver) -> None:
    receiver.answer("/hook", *[500] * 10)
    alert_id = make_alert(engine, receiver.url())
    now, delays = T0, []
    for attempt in range(1, ad.MAX_ATTEMPTS):
        assert ad.deliver_due(engine, now=now)["retrying"] == 1
        alert = get_alert(engine, alert_id)
        assert (alert.attempts, alert.delivery) == (attempt, "pending")
        nxt = utc(alert.next_attempt_at)
        assert nxt is not None
        delays.append(int((nxt - now).total_seconds()))
        now = nxt
    assert delays == list(ad.BACKOFF_S[: ad.MAX_ATTEMPTS - 1])
    assert ad.deliver_due(engine, now=now) == {"delivered": 0, "retrying": 0, "failed": 1}
    alert = get_alert(engine, alert_id)
    assert (alert.delivery, alert.attempts) == ("failed", ad.MAX_ATTEMPTS)
    assert alert.last_error is not None and alert.last_error.startswith("HTTP 500")
    assert "gave up after 5 attempts" in alert.last_error
    assert ad.deliver_due(engine, now=now + timedelta(days=1))["failed"] == 0
    assert len(receiver.seen) == ad.MAX_ATTEMPTS


def test_404_fails_at_once(engine: Engine, receiver: Receiver) -> None:
    receiver.answer("/hook", 404)
    alert_id = make_alert(engine, receiver.url())
    assert ad.deliver_due(engine, now=T0) == {"delivered": 0, "retrying": 0, "failed": 1}
    alert = get_alert(engine, alert_id)
    assert (alert.delivery, alert.attempts) == ("failed", 1)
    assert alert.last_error is not None and alert.last_error.startswith("HTTP 404 (permanent")


@pytest.mark.parametrize("code", [408, 429])
def test_408_and_429_are_retried(engine: Engine, receiver: Receiver, code: int) -> None:
    receiver.answer("/hook", code)
    alert_id = make_alert(engine, receiver.url())
    assert ad.deliver_due(engine, now=T0)["retrying"] == 1
    assert get_alert(engine, alert_id).last_error == f"HTTP {code}"


def test_connection_refused_is_retried(engine: Engine) -> None:
    alert_id = make_alert(engine, closed_port_url())
    assert ad.deliver_due(engine, now=T0) == {"delivered": 0, "retrying": 1, "failed": 0}
    alert = get_alert(engine, alert_id)
    assert alert.delivery == "pending" and alert.attempts == 1
    assert alert.last_error is not None and alert.last_error.startswith("ConnectError: ")
    assert SECRET not in alert.last_error
    assert utc(alert.next_attempt_at) == T0 + timedelta(seconds=5)


def test_timeout_is_retried(engine: Engine, receiver: Receiver) -> None:
    receiver.answer("/hook", "hang")
    alert_id = make_alert(engine, receiver.url())
    started = time.monotonic()
    assert ad.deliver_due(engine, now=T0, timeout_s=0.5)["retrying"] == 1
    assert time.monotonic() - started < 4  # the timeout, not the receiver, ended the wait
    receiver.release.set()
    alert = get_alert(engine, alert_id)
    assert alert.delivery == "pending" and alert.attempts == 1
    assert alert.last_error is not None and alert.last_error.startswith("ReadTimeout")


def test_redirect_is_not_followed(engine: Engine, receiver: Receiver) -> None:
    receiver.answer("/hook", 302)
    alert_id = make_alert(engine, receiver.url())
    assert ad.deliver_due(engine, now=T0)["retrying"] == 1
    assert [r.path for r in receiver.seen] == ["/hook"]
    alert = get_alert(engine, alert_id)
    assert alert.last_error is not None and alert.last_error.startswith("HTTP 302")


def test_one_broken_url_does_not_block_another_assay(engine: Engine, receiver: Receiver) -> None:
    broken = make_alert(engine, closed_port_url(), assay="drift-broken")
    fine = make_alert(engine, receiver.url(), assay="drift-fine")
    assert ad.deliver_due(engine, now=T0) == {"delivered": 1, "retrying": 1, "failed": 0}
    assert get_alert(engine, broken).delivery == "pending"
    assert get_alert(engine, fine).delivery == "delivered"
    assert [json.loads(r.body)["id"] for r in receiver.seen] == [fine]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://127.0.0.1/hook", "scheme 'ftp' is not http or https"),
        ("http://user:hunter2@127.0.0.1/hook", "holds credentials"),
        (None, "has no webhook URL"),
    ],
)
def test_unusable_url_fails_at_once(engine: Engine, url: str | None, error: str) -> None:
    alert_id = make_alert(engine, url)
    assert ad.deliver_due(engine, now=T0) == {"delivered": 0, "retrying": 0, "failed": 1}
    alert = get_alert(engine, alert_id)
    assert alert.delivery == "failed" and alert.last_error is not None
    assert error in alert.last_error and "hunter2" not in alert.last_error


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://hooks.example.com/x", "is not http or https"),
        ("hooks.example.com/x", "has no scheme"),
        ("http:///x", "has no host"),
        ("https://u:p@hooks.example.com/x", "holds credentials"),
        ("https://token@hooks.example.com/x", "holds credentials"),
        ("https://hooks.example.com/" + "a" * 2048, "over 2048"),
        ("https://hooks.example.com/a b", "spaces or control characters"),
        ("https://hooks.example.com:99999/x", "cannot be parsed"),
        ("http://[::1/x", "cannot be parsed"),
    ],
)
def test_validate_webhook_url_refuses(url: str, error: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(error)) as info:
        ad.validate_webhook_url(url)
    assert info.value.hint


def test_validate_webhook_url_accepts() -> None:
    for url in ("https://hooks.example.com/lastmile?k=v", "http://10.0.0.5:8080/h", "HTTPS://x.io"):
        assert ad.validate_webhook_url(url) == url
