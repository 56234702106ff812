"""Drift on the tensors between a pipeline's steps: the capture summariser replays captured
pipeline inputs through the upstream step models, off the hot path, and summarises what
comes out like a captured tensor.

Only what some drift assay watches is computed: an assay on a step input fed by another step,
or on a step output the pipeline does not expose, watches the stored tensor side ``"step"``,
name ``"<step>.<output>"`` (manager.assays.replay.STEP_SIDE / step_key: the step output the
tensor is, whichever step reads it; a pipeline's sides are "inputs" and "outputs", so the
two never meet). At each pass the summariser keeps the decoded inputs of the pipeline
versions such an assay watches (``Replayer.keeper``), runs the steps upstream of the watched
outputs in topological order on the step model versions' registered ONNX files with
onnxruntime on CPU, many captured calls in one run when every step of the plan batches, and
stores the rows per window like any captured tensor, with each assay's exact counts.

One ``onnxruntime.InferenceSession`` per model file (content-addressed: one per model
version), single-threaded, the ``MAX_SESSIONS`` most recently used kept. A replay that fails
(a pipeline or model version gone, a model file missing or unreadable, onnxruntime refusing
the feed) skips those calls alone: it is counted in the pass's ``replay_failed`` and said in
its errors (which the summariser's loop logs), and every other tensor is summarised as usual.
A step whose model is not ONNX cannot be replayed: the assay is refused when it is made
(``check_replayable``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session

from manager import store
from manager.assays import replay
from manager.assays.replay import (
    STEP_SIDE,
    CapturedCalls,
    ReplayError,
    ReplayPlan,
    Runner,
    Wants,
)
from manager.domain import PipelineSpec, PipelineStep
from manager.errors import InvalidInput, NotFound
from manager.services.capture import Binners, Key, PassResult, rows_of

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

MAX_SESSIONS = 16  # onnxruntime sessions kept across passes (least recently used dropped)
MAX_ERRORS = 5  # replay failures described in one pass's errors (all are counted)
REPLAYABLE_FORMATS = ("onnx",)


def wants(binners: Binners) -> Wants:
    """(workspace, pipeline) -> (version or None, stored name) of every watched step tensor."""
    out: dict[tuple[str, str], list[tuple[int | None, str]]] = defaultdict(list)
    for (workspace, pipeline, side, tensor), found in binners.items():
        if side == STEP_SIDE:
            out[(workspace, pipeline)] += [(b.version, tensor) for b in found]
    return dict(out)


def _step_versions(
    session: Session, workspace: store.Workspace, steps: Sequence[PipelineStep]
) -> dict[str, store.ModelVersion]:
    found: dict[str, store.ModelVersion] = {}
    for step in steps:
        model = store.get_model(session, workspace=workspace, name=step.model)
        found[step.name] = store.get_model_version(session, model=model, version=step.version)
    return found


def check_replayable(
    session: Session, workspace: store.Workspace, spec: PipelineSpec, key: str, *, what: str
) -> None:
    """InvalidInput when the summariser could not compute ``key`` (a ``step_key``) for
    ``spec``: a step upstream of it runs a model that is not ONNX. ``what`` names the
    tensor as the user asked for it."""
    try:
        the_plan = replay.plan(spec, [key])
    except ReplayError as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    versions = _step_versions(session, workspace, the_plan.steps)
    for step in the_plan.steps:
        kind = versions[step.name].format
        if kind not in REPLAYABLE_FORMATS:
            raise InvalidInput(
                f"{what} is between steps: the manager computes it by replaying the captured "
                f"inputs through the steps before it with onnxruntime, and step {step.name!r} "
                f"runs model {step.model}:{step.version}, a {kind} model, not ONNX",
                hint="watch the pipeline's own input or output, or the step's live figures "
                "(a health assay, --health queue_ms --step MODEL)",
            )


@dataclass
class _Version:
    """One pipeline version's replay, as read from the store: the plan and each step's file."""

    plan: ReplayPlan
    files: Mapping[str, str]  # step name -> its model version's ONNX file


class Replayer:
    """The summariser's replays, with the onnxruntime sessions they keep between passes."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, max_rows: int = replay.MAX_ROWS) -> None:
        self.max_sessions = max_sessions
        self.max_rows = max_rows
        self._sessions: OrderedDict[str, ort.InferenceSession] = OrderedDict()

    def keeper(self, binners: Binners) -> CapturedCalls | None:
        """Where a pass keeps the inputs to replay; None when no assay watches a step tensor."""
        wanted = wants(binners)
        return CapturedCalls(wants=wanted) if wanted else None

    def replay(
        self,
        engine: Engine,
        kept: CapturedCalls,
        groups: dict[Key, list[np.ndarray]],
        result: PassResult,
    ) -> None:
        """Add the watched step tensors of the kept calls to ``groups`` (rows per window, as
        ``capture.collect`` gives captured tensors); failures are counted in ``result``."""
        if not kept.stacks:
            return
        identities = {key[:3] for key in kept.stacks}
        with Session(engine) as session:  # read, then closed: no transaction while models run
            loaded = {ident: self._load(session, ident, kept) for ident in identities}
        broken: dict[str, str] = {}  # model file -> why it cannot be loaded (this pass)
        for (workspace, pipeline, version, start), stacks in kept.stacks.items():
            job = loaded[(workspace, pipeline, version)]
            where = f"{workspace}/{pipeline} v{version}"
            if job is None:
                continue  # nothing watched in this version
            try:
                if isinstance(job, str):
                    raise ReplayError(job)
                runs, lacking = replay.chunks(stacks, job.plan, self.max_rows)
            except Exception as exc:
                calls = sum(min(a.shape[0] for a in s.values()) for s in stacks)
                self._failed(result, calls, f"{where}: {exc}")
                continue
            if lacking:
                self._failed(result, lacking, f"{where}: calls without {job.plan.inputs}")
            runner = self._runner(job, broken)
            for chunk in runs:
                try:
                    outputs = replay.run(job.plan, chunk.feed, runner)
                except Exception as exc:  # onnxruntime's errors have no common base
                    log.debug("replay of %s failed", where, exc_info=True)
                    self._failed(result, chunk.calls, f"{where}: {exc}")
                    continue
                result.replayed += chunk.calls
                for key, array in outputs.items():
                    rows = rows_of(array)
                    if rows is not None and rows.size:
                        groups[(workspace, pipeline, version, STEP_SIDE, key, start)].append(rows)
                        result.values += rows.size

    @staticmethod
    def _failed(result: PassResult, calls: int, why: str) -> None:
        result.replay_failed += calls
        text = f"replay {why}"
        if len(result.errors) < MAX_ERRORS and text not in result.errors:
            result.errors.append(text)

    def _load(
        self, session: Session, ident: tuple[str, str, int], kept: CapturedCalls
    ) -> _Version | str | None:
        """The version's replay; None when it has no watched step tensor, or why it fails."""
        workspace, pipeline, version = ident
        try:
            ws = store.get_workspace(session, name=workspace)
            pipe = store.find_pipeline(session, workspace=ws, name=pipeline)
            if pipe is None:
                return f"pipeline {pipeline!r} is gone"
            row = store.get_pipeline_version(session, pipeline=pipe, version=version)
            spec = PipelineSpec.from_dict(row.spec)
            present = set()
            for key in kept.keys_for(*ident):
                ref = replay.parse_step_key(key)
                step = spec.step(ref.step)
                if step is not None and step.signature.output(ref.tensor) is not None:
                    present.add(key)
            if not present:  # a version without the watched step (an assay on all versions)
                return None
            the_plan = replay.plan(spec, present)
            versions = _step_versions(session, ws, the_plan.steps)
        except (NotFound, ReplayError) as exc:
            return str(exc)
        except Exception as exc:  # whatever it is, it fails this version's calls alone
            log.debug("replay of %s v%s cannot be planned", pipeline, version, exc_info=True)
            return f"{type(exc).__name__}: {exc}"
        for name, mv in versions.items():
            if mv.format not in REPLAYABLE_FORMATS:
                return f"step {name!r} runs a {mv.format} model, not ONNX"
        return _Version(the_plan, {name: mv.path for name, mv in versions.items()})

    def _runner(self, job: _Version, broken: dict[str, str]) -> Runner:
        def run(step: PipelineStep, names: Sequence[str], feed: dict[str, np.ndarray]) -> Any:
            path = job.files[step.name]
            if path in broken:
                raise ReplayError(broken[path])
            try:
                session = self._session(path)
            except Exception as exc:
                broken[path] = f"step {step.name!r} ({step.model}:{step.version}): {exc}"
                raise ReplayError(broken[path]) from exc
            return session.run(list(names), feed)

        return run

    def _session(self, path: str) -> ort.InferenceSession:
        session = self._sessions.get(path)
        if session is not None:
            self._sessions.move_to_end(path)
            return session
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"model file {path} is missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # off the hot path: leave the cores to serving
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._sessions[path] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session
