"""Running assays: each window scored, stored, alerted and acted on; backfill; the schedule.

Windows are epoch-aligned (manager.assays.windows), so the scheduled run, `lastmile assay run`
and a backfill judge the same windows the same way. A drift window merges the capture
summaries whose window starts in [start, end), bins them with the assay's fixed edges and
scores them against the baseline's counts; a health window reads the stored figures whose
interval ends in (start, end]. Backfill results are kept apart (``backfill``): they never
alert and never act, they say what the assay would have said.

An alert (a window at warning or alert) is stored, queued for the assay's webhook, and, at
alert, when the assay watches a candidate version of the pipeline's active rollout and says
``on_alert: pause|rollback``, the rollout is paused or rolled back with the result in its log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from manager import store
from manager.assays import drift
from manager.assays.sketch import Summary, merge_all
from manager.assays.windows import Thresholds, status, windows
from manager.errors import Conflict, InvalidInput, LastmileError, NotFound
from manager.services import assays as assay_service
from manager.services.context import Platform
from manager.services.lookups import as_utc

log = logging.getLogger(__name__)

MAX_CATCH_UP = 288  # windows one scheduled pass judges per assay (a day of 5-minute windows)
MAX_BACKFILL = 10_000


def _drift_window(
    session: Any, assay: store.Assay, pipeline: str, workspace: str, start: datetime, end: datetime
) -> tuple[float | None, int, list[int], dict[str, Any]]:
    rows = store.list_capture_summaries(
        session,
        workspace=workspace,
        pipeline=pipeline,
        side=assay.side,
        tensor=assay.tensor,
        version=assay.version,
        since=start,
        until=end,
    )
    key = str(assay.id)
    outliers = bool(assay.binning.get("outliers", True))
    counts = np.zeros(len(assay.baseline_counts), dtype=np.int64)
    parts: list[Summary] = []
    sketched: list[Summary] = []
    exact = 0
    for row in rows:
        if assay.element is None:
            part = Summary.from_json(row.pooled)
        elif assay.element < len(row.elements):
            part = Summary.from_json(row.elements[assay.element])
        else:
            continue
        parts.append(part)
        if key in row.assay_counts:  # binned exactly by the summariser
            counts += np.asarray(row.assay_counts[key], dtype=np.int64)
            exact += 1
        else:  # summarised before the assay existed: its sketch, binned here
            sketched.append(part)
    if not parts:
        return None, 0, [], {"windows": 0}
    if sketched:
        counts += merge_all(sketched).bin_counts(np.asarray(assay.edges), outliers)
    summary = merge_all(parts)
    total = int(counts.sum())
    enough = total >= max(1, assay.min_values)
    score = drift.score(assay.metric, assay.baseline_counts, counts) if enough else None
    details: dict[str, Any] = {
        "windows": len(parts),
        "exact_windows": exact,
        "rows": sum(r.rows for r in rows),
        "missing": summary.missing,
        "mean": summary.mean,
        "min": summary.min,
        "max": summary.max,
    }
    if total and not enough:  # judged as no data: too few values to score
        details["min_values"] = assay.min_values
    return score, total, [int(c) for c in counts], details


def _health_window(
    session: Any, assay: store.Assay, pipeline: str, workspace: str, start: datetime, end: datetime
) -> tuple[float | None, int, list[int], dict[str, Any]]:
    names, how = assay_service.HEALTH_FIGURES[assay.figure]
    points = store.metric_points_in(
        session,
        workspace=workspace,
        pipeline=pipeline,
        names=names,
        after=start,
        until=end,
        # a shared step's figures belong to no version: a step assay takes them all
        version=None if assay.step else assay.version,
    )
    if assay.step:
        points = [
            p
            for p in points
            if p.step == assay.step
            and (assay.version is None or p.version in (None, assay.version))
        ]
    if not points:
        return None, 0, [], {}
    score: float | None
    if how == "max":
        score = max(p.value for p in points)
    elif how == "ratio":
        # both rates times their interval: the window's error count over its request count
        errors = sum(p.value * p.interval_s for p in points if p.name == names[0])
        requests = sum(p.value * p.interval_s for p in points if p.name == names[1])
        score = errors / requests if requests > 0 else None
        return score, len(points), [], {"errors": errors, "requests": requests}
    elif assay.step:  # one step's figure: its mean over the window's intervals (and servers)
        score = sum(p.value for p in points) / len(points)
    elif how == "ensemble_mean":
        values = [p.value for p in points if p.step == ""]
        score = sum(values) / len(values) if values else None
    else:  # step_sum_mean: per interval, the sum over the pipeline's steps; then the mean
        per_ts: dict[datetime, float] = {}
        for p in points:
            if p.step:
                per_ts[p.ts] = per_ts.get(p.ts, 0.0) + p.value
        score = sum(per_ts.values()) / len(per_ts) if per_ts else None
    return score, len(points), [], {"points": len(points)}


def evaluate(
    session: Any, assay: store.Assay, start: datetime, end: datetime, *, backfill: bool = False
) -> store.AssayResult:
    """The result of one window (not stored)."""
    pipe = session.get(store.Pipeline, assay.pipeline_id)
    ws = session.get(store.Workspace, assay.workspace_id)
    judge = _drift_window if assay.kind == "drift" else _health_window
    score, count, counts, details = judge(session, assay, pipe.name, ws.name, start, end)
    verdict = status(score, Thresholds(warning=assay.warning, alert=assay.alert))
    return store.AssayResult(
        assay_id=assay.id,  # type: ignore[arg-type]
        window_start=start,
        window_end=end,
        score=score,
        status=verdict,
        count=count,
        window_counts=counts,
        details=details,
        backfill=backfill,
    )


def _message(assay: store.Assay, result: store.AssayResult) -> str:
    limit = assay.alert if result.status == "alert" else assay.warning
    what = (
        f"{assay.side} {assay.tensor!r}"
        + (f"[{assay.element}]" if assay.element is not None else "")
        if assay.kind == "drift"
        else assay.figure
    )
    version = f" of version {assay.version}" if assay.version is not None else ""
    return (
        f"assay {assay.name!r}: {assay.metric} {result.score:.4g} >= {result.status} "
        f"threshold {limit:g} on {what}{version}, window "
        f"{as_utc(result.window_start):%Y-%m-%d %H:%M:%S}–{as_utc(result.window_end):%H:%M:%S} UTC "
        f"(result #{result.id})"
    )


def _act(platform: Platform, assay_id: int, message: str) -> str:
    """Pause or roll back the active rollout when the assay watches one of its candidates."""
    from manager.services import rollouts

    with platform.session() as session:
        assay = session.get(store.Assay, assay_id)
        if assay is None or assay.on_alert == "none" or assay.version is None:
            return ""
        name, on_alert = assay.name, assay.on_alert
        pipe = session.get(store.Pipeline, assay.pipeline_id)
        ws = session.get(store.Workspace, assay.workspace_id)
        if pipe is None or ws is None:
            return ""
        rollout = store.active_rollout(session, pipeline=pipe)
        if rollout is None or assay.version not in rollout.candidates:
            return ""
        rollout_id, state = rollout.id, rollout.state
        names = (ws.name, pipe.name)
    if on_alert == "pause" and state != "running":
        return ""
    try:
        rollouts.act(
            platform,
            workspace=names[0],
            pipeline=names[1],
            action=on_alert,
            principal=f"assay:{name}",
            reason=message,
        )
    except (Conflict, InvalidInput) as exc:  # finished meanwhile, or nothing to pause
        log.info("assay %s: rollout #%s not changed: %s", name, rollout_id, exc)
        return ""
    done = "paused" if on_alert == "pause" else "rolled back"
    return f"{done} rollout #{rollout_id}"


def _judge(platform: Platform, assay_id: int, start: datetime, end: datetime) -> dict[str, Any]:
    """Score, store; on warning/alert an alert (queued for the webhook) and the action."""
    with platform.session() as session:
        assay = session.get(store.Assay, assay_id)
        if assay is None:
            raise NotFound(f"assay #{assay_id} was deleted")
        result = store.save_assay_result(session, evaluate(session, assay, start, end))
        if assay.last_window_end is None or as_utc(assay.last_window_end) < end:
            assay.last_window_end = end
            session.add(assay)
        alert = None
        message = ""
        if result.status in ("warning", "alert"):
            message = _message(assay, result)
            alert = store.add_alert(
                session,
                store.Alert(
                    assay_id=assay_id,
                    result_id=result.id,  # type: ignore[arg-type]
                    status=result.status,
                    message=message,
                    delivery="pending" if assay.webhook_url else "none",
                    next_attempt_at=store.utcnow() if assay.webhook_url else None,
                ),
            )
        session.commit()
        out = assay_service.result_dict(result)
        alert_id = alert.id if alert else None
    if alert_id is not None and out["status"] == "alert":
        action = _act(platform, assay_id, message)
        if action:
            with platform.session() as session:
                row = session.get(store.Alert, alert_id)
                row.action = action  # type: ignore[union-attr]
                session.add(row)
                session.commit()
            out["action"] = action
    return out


def run_due(
    platform: Platform,
    now: datetime | None = None,
    delay_s: float | None = None,
    watermark: float | None = None,
) -> list[dict[str, Any]]:
    """Judge every enabled assay's windows that ended since its last one, once they ended
    `delay_s` ago (LASTMILE_ASSAY_DELAY_S: the time figures and captured calls take to reach
    the store) and, for drift, before the summariser's `watermark` (when one is given)."""
    if delay_s is None:
        delay_s = platform.settings.assay_delay_s
    now = (now or store.utcnow()) - timedelta(seconds=delay_s)
    with platform.session() as session:
        todo = [
            (a.id, a.kind, a.window_s, a.interval_s, a.last_window_end, a.created_at)
            for a in store.list_assays(session)
            if a.enabled
        ]
    done = []
    for assay_id, kind, window_s, interval_s, last, created in todo:
        width, step = timedelta(seconds=window_s), timedelta(seconds=interval_s)
        until = now
        if kind == "drift" and watermark is not None:
            until = min(now, datetime.fromtimestamp(watermark, tz=timezone.utc))
        # windows ending after the last one judged (or after the assay was made)
        base = as_utc(last if last is not None else created)
        due = windows(base - width + timedelta(microseconds=1), until, width, step)
        for w_start, w_end in due[-MAX_CATCH_UP:]:
            try:
                done.append(_judge(platform, assay_id, w_start, w_end))  # type: ignore[arg-type]
            except LastmileError as exc:
                log.warning("assay #%s window %s: %s", assay_id, w_end, exc)
    return done


def run_now(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    now: datetime | None = None,
    watermark: float | None = None,
) -> dict[str, Any]:
    """Judge the latest window that ended LASTMILE_ASSAY_DELAY_S ago (and, for drift, before
    the summariser's `watermark`), again if it was judged already, with its alert and action."""
    now = (now or store.utcnow()) - timedelta(seconds=platform.settings.assay_delay_s)
    with platform.session() as session:
        _ws, assay = assay_service._get(session, workspace, name)
        width, step = timedelta(seconds=assay.window_s), timedelta(seconds=assay.interval_s)
        assay_id = assay.id
        if assay.kind == "drift" and watermark is not None:
            now = min(now, datetime.fromtimestamp(watermark, tz=timezone.utc))
    due = windows(now - width - step, now, width, step)
    if not due:
        raise InvalidInput("no complete window yet", hint="wait one interval")
    return _judge(platform, assay_id, *due[-1])  # type: ignore[arg-type]


def backfill(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    since: datetime,
    until: datetime | None = None,
) -> dict[str, Any]:
    """What the assay would have said over [since, until]: results kept apart, no alerts."""
    until = until or store.utcnow()
    with platform.session() as session:
        _ws, assay = assay_service._get(session, workspace, name)
        width, step = timedelta(seconds=assay.window_s), timedelta(seconds=assay.interval_s)
        due = windows(as_utc(since), as_utc(until), width, step)
        if len(due) > MAX_BACKFILL:
            raise InvalidInput(
                f"{len(due)} windows to backfill; at most {MAX_BACKFILL} at once",
                hint="a shorter range, or a longer --interval",
            )
        out = [
            assay_service.result_dict(
                store.save_assay_result(session, evaluate(session, assay, s, e, backfill=True))
            )
            for s, e in due
        ]
        session.commit()
        return {**assay_service.describe(session, assay), "results": out}


def gate(platform: Platform, *, names: list[str], workspace: str, after: datetime) -> dict | None:
    """For a canary: None while every named assay has a result after `after` and none at
    alert; else {"hold": reason} (no result yet) or {"fail": reason} (an alert)."""
    with platform.session() as session:
        ws = store.get_workspace(session, name=workspace)
        waiting = []
        for name in names:
            assay = store.find_assay(session, workspace=ws, name=name)
            if assay is None:
                return {"fail": f"gate assay {name!r} no longer exists"}
            rows = store.list_assay_results(session, assay_id=assay.id, since=after)  # type: ignore[arg-type]
            for row in rows:
                if row.status == "alert":
                    return {"fail": _message(assay, row), "result": row.id}
            if not any(r.status != "no_data" for r in rows):
                waiting.append(name)
        if waiting:
            return {"hold": f"waiting for a judged window of assay(s) {', '.join(waiting)}"}
    return None


class Loop:
    """Runs due assays and delivers pending alerts every `interval_s` (a thread)."""

    def __init__(
        self,
        platform: Platform,
        interval_s: float,
        watermark: Callable[[], float | None] | None = None,
    ) -> None:
        self.platform = platform
        self.interval_s = interval_s
        # the capture summariser's watermark (manager.services.capture.Summariser)
        self.watermark = watermark
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="assays", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        from manager.services.alert_delivery import deliver_due

        while not self._stop.wait(self.interval_s):
            try:
                mark = self.watermark() if self.watermark is not None else None
                run_due(self.platform, watermark=mark)
                deliver_due(self.platform.engine)
            except Exception:  # keep going: one bad pass must not stop assays for good
                log.exception("assay pass failed")
