"""The capture summariser: the gateway's raw capture segments become per-window summaries.

The gateway (rollout.capture) only writes bytes. Here, on the manager's own thread, each
closed segment is decoded (KServe v2 HTTP JSON or binary, gRPC ModelInfer messages: requests
for the inputs, answers for the outputs, rollout.tensors), every tensor is flattened to one
row per batch item, and each (pipeline version, side, tensor, window) gets a
manager.assays.sketch summary: count, missing, min/max/mean and the value distribution,
pooled over all elements and per element. Summaries merge, so a window filled by several
passes (or several gateways) is one row. Assays bin these summaries with their baseline's
edges; raw bytes are not kept unless `capture_keep_raw_s` says so.

Tensors between a pipeline's steps never reach the gateway: for those a drift assay watches,
the captured inputs are replayed through the upstream step models and stored under side
"step" (manager.services.step_replay).

After a pass that took every closed segment, ``watermark`` says up to when the store holds
every captured call (a segment closes at most SEGMENT_S after it opens): the assay scheduler
judges no drift window that ends later, so a window is never judged on part of its traffic.

A segment is deleted once its summaries are committed. Were the manager to die between the
commit and the delete, that segment would be counted again at the next start: the figures of
one segment (at most a couple of seconds of sampled traffic) twice, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager import store
from manager.assays.binning import bin_counts_values
from manager.assays.replay import CapturedCalls
from manager.assays.sketch import Summary, summarise
from rollout.capture import GRPC, HTTP, SEGMENT_S, Record, closed_segments, read_segment
from rollout.tensors import DecodeError, decode_grpc, decode_http, decode_json_batch

if TYPE_CHECKING:
    from manager.services.step_replay import Replayer

log = logging.getLogger(__name__)

WRITE_LAG_S = 1.0  # margin for the gateway's spool thread to write what it was handed
MAX_ELEMENTS = 64  # per-element summaries for tensors with at most this many values per row
SIDES = ("inputs", "outputs")

# (workspace, pipeline, version, side, tensor, window start)
Key = tuple[str, str, int, str, str, datetime]


@dataclass
class PassResult:
    """What one pass did, for logs, tests and the API."""

    segments: int = 0
    records: int = 0
    values: int = 0
    undecodable: int = 0
    summaries: int = 0
    replayed: int = 0  # captured calls replayed through step models (manager.services.step_replay)
    replay_failed: int = 0  # captured calls whose replay failed (the reasons in `errors`)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "segments": self.segments,
            "records": self.records,
            "values": self.values,
            "undecodable": self.undecodable,
            "summaries": self.summaries,
            "replayed": self.replayed,
            "replay_failed": self.replay_failed,
        }


def rows_of(array: np.ndarray) -> np.ndarray | None:
    """A tensor as (batch items, values per item) floats; None for BYTES (not numeric)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return None
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(a.shape[0], -1)


def _decode(record: Record, side: str) -> dict[str, np.ndarray]:
    body, hlen = (
        (record.request, record.request_hlen)
        if side == "inputs"
        else (record.response, record.response_hlen)
    )
    if record.protocol == HTTP:
        return decode_http(body, hlen if hlen >= 0 else None, side=side)
    if record.protocol == GRPC:
        return decode_grpc(body, side=side)
    raise DecodeError(f"unknown protocol {record.protocol}")


def _identity(record: Record) -> tuple[str, str, int] | None:
    """(workspace, pipeline, version) from the route key and variant name."""
    workspace, sep, pipeline = record.route.partition("/")
    name, vsep, version = record.variant.rpartition("/")
    if not sep or not vsep or name != pipeline or not version.isdigit():
        return None
    return workspace, pipeline, int(version)


def window_start(ts: float, width_s: int) -> datetime:
    start = int(ts // width_s) * width_s
    return datetime.fromtimestamp(start, tz=timezone.utc)


def _batch_rows(batch: np.ndarray) -> np.ndarray:
    """What `rows_of` gives for each body's tensor, for all bodies at once."""
    n, shape = batch.shape[0], batch.shape[1:]
    if len(shape) >= 2:
        return batch.reshape(n * shape[0], -1).astype(np.float64, copy=False)
    return batch.reshape(n, -1).astype(np.float64, copy=False)


def collect(
    records: list[Record],
    width_s: int,
    result: PassResult,
    replay: CapturedCalls | None = None,
) -> dict[Key, list[np.ndarray]]:
    """The decoded tensors of `records`, grouped by summary key (no I/O).

    Pure-JSON HTTP calls of one pipeline version and window are decoded together
    (rollout.tensors.decode_json_batch: one parse, one conversion per tensor), which is most
    of the traffic of small JSON requests; anything else, one by one. The decoded inputs of
    the versions `replay` wants are kept there too, whole, for the step replay."""
    groups: dict[Key, list[np.ndarray]] = defaultdict(list)
    batches: dict[tuple[str, str, int, datetime], list[Record]] = defaultdict(list)
    singles: list[tuple[tuple[str, str, int], datetime, Record]] = []
    for record in records:
        result.records += 1
        identity = _identity(record)
        if identity is None:
            result.undecodable += 1
            continue
        start = window_start(record.ts, width_s)
        if record.protocol == HTTP and record.request_hlen < 0 and record.response_hlen < 0:
            batches[(*identity, start)].append(record)
        else:
            singles.append((identity, start, record))
    for (workspace, pipeline, version, start), batch in batches.items():
        decoded = {
            side: decode_json_batch([r.request if side == "inputs" else r.response
                                     for r in batch], side)
            for side in SIDES
        }  # fmt: skip
        if any(tensors is None for tensors in decoded.values()):
            # not regular: one by one, so that each refusal is counted and said
            singles += [((workspace, pipeline, version), start, r) for r in batch]
            continue
        if replay is not None and replay.keys_for(workspace, pipeline, version):
            replay.add((workspace, pipeline, version, start), decoded["inputs"] or {}, stacked=True)
        for side, tensors in decoded.items():
            assert tensors is not None
            for name, array in tensors.items():
                taken = _batch_rows(array)
                if taken.size:
                    groups[(workspace, pipeline, version, side, name, start)].append(taken)
                    result.values += taken.size
    for identity, start, record in singles:
        for side in SIDES:
            try:
                tensors = _decode(record, side)
            except DecodeError as exc:
                result.undecodable += 1
                if len(result.errors) < 5:
                    result.errors.append(f"{record.route} {side}: {exc}")
                continue
            if side == "inputs" and replay is not None and replay.keys_for(*identity):
                replay.add((*identity, start), tensors, stacked=False)
            for name, array in tensors.items():
                rows = rows_of(array)
                if rows is not None and rows.size:
                    groups[(*identity, side, name, start)].append(rows)
                    result.values += rows.size
    return groups


def summaries_of(arrays: list[np.ndarray]) -> tuple[int, Summary, list[Summary]]:
    """(rows, pooled summary, per-element summaries or [] when too wide or ragged)."""
    widths = {a.shape[1] for a in arrays}
    rows = sum(a.shape[0] for a in arrays)
    pooled = summarise(np.concatenate([a.ravel() for a in arrays]))[0]
    if len(widths) != 1 or next(iter(widths)) > MAX_ELEMENTS:
        return rows, pooled, []
    return rows, pooled, summarise(np.concatenate(arrays))


@dataclass(frozen=True)
class Binner:
    """A drift assay's fixed binning: its windows' exact bin counts are kept per summary."""

    assay_id: int
    version: int | None
    element: int | None
    edges: np.ndarray
    outliers: bool

    def counts(self, arrays: list[np.ndarray]) -> np.ndarray | None:
        if self.element is None:
            values = np.concatenate([a.ravel() for a in arrays])
        elif all(a.shape[1] > self.element for a in arrays):
            values = np.concatenate([a[:, self.element] for a in arrays])
        else:
            return None
        return bin_counts_values(values, self.edges, self.outliers)


Binners = dict[tuple[str, str, str, str], list[Binner]]


def binners(session: Session) -> Binners:
    """Every drift assay's binning, by (workspace, pipeline, side, tensor)."""
    out: Binners = defaultdict(list)
    for assay in store.list_assays(session):
        if assay.kind != "drift" or not assay.edges:
            continue
        pipe = session.get(store.Pipeline, assay.pipeline_id)
        ws = session.get(store.Workspace, assay.workspace_id)
        if pipe is None or ws is None:
            continue
        out[(ws.name, pipe.name, assay.side, assay.tensor)].append(
            Binner(
                assay_id=assay.id,  # type: ignore[arg-type]
                version=assay.version,
                element=assay.element,
                edges=np.asarray(assay.edges, dtype=np.float64),
                outliers=bool(assay.binning.get("outliers", True)),
            )
        )
    return out


def _assay_counts(
    row: store.CaptureSummary, new: bool, arrays: list[np.ndarray], found: list[Binner]
) -> dict[str, list[int]]:
    """The row's exact counts per assay with this batch added. A window that was being
    summarised before an assay existed gets none for it (its counts would miss the earlier
    calls): the assay bins that window's sketch instead."""
    counts = dict(row.assay_counts or {})
    for binner in found:
        key = str(binner.assay_id)
        if (binner.version is not None and binner.version != row.version) or (
            not new and key not in counts
        ):
            continue
        batch = binner.counts(arrays)
        if batch is None:
            continue
        before = np.asarray(counts.get(key, np.zeros_like(batch)), dtype=np.int64)
        if before.shape != batch.shape:  # the assay's edges cannot change; be safe anyway
            continue
        counts[key] = (before + batch).tolist()
    return counts


def store_groups(
    session: Session,
    groups: dict[Key, list[np.ndarray]],
    width_s: int,
    assay_binners: Binners | None = None,
) -> int:
    """Merge each group into its window's row (created when new); rows written."""
    if assay_binners is None:
        assay_binners = binners(session)
    written = 0
    for key, arrays in groups.items():
        workspace, pipeline, version, side, tensor, start = key
        rows, pooled, elements = summaries_of(arrays)
        row = store.find_capture_summary(
            session,
            workspace=workspace,
            pipeline=pipeline,
            version=version,
            side=side,
            tensor=tensor,
            window_start=start,
        )
        if row is None:
            row = store.CaptureSummary(
                workspace=workspace,
                pipeline=pipeline,
                version=version,
                side=side,
                tensor=tensor,
                window_start=start,
                width_s=width_s,
            )
            old_elements: list[Summary] | None = []
            new = True
        else:
            new = False
            pooled = pooled.merge(Summary.from_json(row.pooled))
            old = [Summary.from_json(e) for e in row.elements]
            old_elements = old if (row.rows == 0 or len(old) == len(elements)) else None
        if old_elements:
            elements = [a.merge(b) for a, b in zip(old_elements, elements, strict=True)]
        elif old_elements is None:  # the tensor's width changed within the window
            elements = []
        found = assay_binners.get((workspace, pipeline, side, tensor), [])
        row.assay_counts = _assay_counts(row, new, arrays, found)
        row.rows += rows
        row.pooled = pooled.to_json()
        row.elements = [e.to_json() for e in elements]
        store.add_capture_summary(session, row)
        written += 1
    return written


class Summariser:
    """Consumes the spool folder every `interval_s` (a thread, like the scraper)."""

    def __init__(
        self,
        *,
        engine: Engine,
        directory: Path,
        width_s: int = 60,
        interval_s: float = 5.0,
        keep_raw_s: float = 0.0,
        retention: timedelta = timedelta(days=30),
        replayer: Replayer | None = None,
    ) -> None:
        from manager.services.step_replay import Replayer  # it builds on this module

        self.engine = engine
        self.directory = directory
        self.width_s = width_s
        self.interval_s = interval_s
        self.keep_raw_s = keep_raw_s
        self.retention = retention
        self.replayer = replayer if replayer is not None else Replayer()
        self._lock = threading.Lock()  # one pass at a time (the timer and an API call)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: PassResult | None = None
        # epoch seconds before which every captured call is summarised (None: no pass yet)
        self.watermark: float | None = None

    @property
    def raw_dir(self) -> Path:
        return self.directory / "raw"

    def run_once(self, max_segments: int = 64) -> PassResult:
        with self._lock:
            return self._pass(max_segments)

    def _pass(self, max_segments: int) -> PassResult:
        result = PassResult()
        began = time.time()
        waiting = closed_segments(self.directory)
        segments = waiting[:max_segments]
        records: list[Record] = []
        for path in segments:
            try:
                records.extend(read_segment(path))
            except OSError as exc:
                result.errors.append(f"{path.name}: {exc}")
        with Session(self.engine) as session:
            assay_binners = binners(session)
        kept = self.replayer.keeper(assay_binners) if records else None
        groups = collect(records, self.width_s, result, kept)
        if kept is not None:
            self.replayer.replay(self.engine, kept, groups, result)
        with Session(self.engine) as session:
            result.summaries = store_groups(session, groups, self.width_s, assay_binners)
            now = store.utcnow()
            store.prune_capture_summaries(session, before=now - self.retention)
            session.commit()
        for path in segments:
            self._retire(path)
        result.segments = len(segments)
        self._prune_raw()
        self.last = result
        if result.errors:  # a pass asked for through the API too
            log.warning("capture summariser: %s", "; ".join(result.errors))
        if len(segments) == len(waiting):
            # every call captured before then sat in a segment closed before this pass began
            self.watermark = began - SEGMENT_S - WRITE_LAG_S
        return result

    def _retire(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.keep_raw_s > 0:
                self.raw_dir.mkdir(exist_ok=True)
                path.rename(self.raw_dir / path.name)
            else:
                path.unlink()

    def _prune_raw(self) -> None:
        if not self.raw_dir.is_dir():
            return
        cutoff = time.time() - self.keep_raw_s
        for path in self.raw_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # keep summarising; one bad pass must not stop the loop
                log.exception("capture summariser pass failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture-summariser", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
