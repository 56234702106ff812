"""Charts of an assay: its score over time with the thresholds, and the baseline's
distribution beside a window's (manager.charts draws them)."""

from __future__ import annotations

from datetime import datetime

from manager import charts, store
from manager.errors import InvalidInput
from manager.services import assays as assay_service
from manager.services.context import Platform


def _proportions(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def render(
    platform: Platform,
    *,
    workspace: str,
    name: str,
    kind: str = "scores",
    fmt: str = "svg",
    since: datetime | None = None,
    backfill: bool = False,
) -> bytes:
    """`kind` "scores": every judged window's score since `since`; "histogram": the baseline
    vs the latest window that had data."""
    with platform.session() as session:
        _ws, assay = assay_service._get(session, workspace, name)
        rows = store.list_assay_results(
            session,
            assay_id=assay.id,  # type: ignore[arg-type]
            since=since,
            backfill=backfill,
        )
        pipe = session.get(store.Pipeline, assay.pipeline_id)
        title = f"{assay.name} · {pipe.name if pipe else '?'}"
        if kind == "scores":
            points = [(r.window_end, r.score) for r in rows]
            return charts.drift_chart(
                points,
                warning=assay.warning,
                alert=assay.alert,
                title=f"{title} · {assay.metric}" + (" (backfill)" if backfill else ""),
                metric=assay.metric,
                fmt=fmt,
            )
        if kind != "histogram":
            raise InvalidInput(f"unknown chart {kind!r}", hint="scores or histogram")
        if assay.kind != "drift":
            raise InvalidInput(
                f"assay {name!r} checks a live figure: it has no histogram",
                hint="ask for the scores chart",
            )
        latest = next((r for r in reversed(rows) if r.window_counts), None)
        outliers = bool(assay.binning.get("outliers", True))
        labels = charts.bin_labels(assay.edges, outliers)
        window = _proportions(latest.window_counts) if latest else [0.0] * len(labels)
        when = f"{latest.window_start:%Y-%m-%d %H:%M}" if latest else "no window with data"
        return charts.histogram_chart(
            labels,
            _proportions(assay.baseline_counts),
            window,
            title=f"{title} · {assay.side}/{assay.tensor} · baseline vs {when}",
            fmt=fmt,
        )
