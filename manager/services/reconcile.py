"""Bringing the repository, Triton and the gateway back to what the store says is live.

The store is the source of truth: live deployments → pipeline versions → model versions whose
files are kept content-addressed. From it follow the repository's folders, files and configs
(built by the same functions a deploy uses), what Triton must have loaded, and the gateway's
routing table. ``reconcile`` looks at all of them, lets ``manager.plan.drift.plan`` say what
differs, and carries that out under the deploy lock, so it never races a deploy.

It is safe to run at any time (start-up, on a timer, after a restart) and idempotent: right
after a run, a second one finds nothing to do. One model or deployment that cannot be restored
(its stored file is missing or damaged, Triton refuses it) is reported, and written to its
deployment's ``error``, while everything else is repaired; it is never removed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from manager import store
from manager.domain import PipelineSpec
from manager.errors import GatewayError, LastmileError
from manager.plan import drift
from manager.plan.drift import Action, Published, Seen, Wanted, Wants
from manager.repository.writer import (
    DigestCache,
    RepositoryWriter,
    sha256_bytes,
    tree_digest,
)
from manager.services import deployments, serving
from manager.services.context import Platform
from manager.services.publish import published_extras
from manager.triton.fleet import FleetClient

log = logging.getLogger(__name__)

__all__ = ["reconcile"]


@dataclass
class _Desired:
    """``Wants`` plus what it takes to write and attribute each name."""

    wants: Wants
    models: dict[str, tuple[deployments._Needed, Any]]  # Triton model → (needs, config)
    ensembles: dict[str, Any]  # ensemble → config
    users: dict[str, set[str]]  # Triton name → "<ws>/<pipeline>" of the live deployments using it
    errors: list[dict[str, str]]
    failed: dict[str, list[str]]  # "<ws>/<pipeline>" → errors found while building it


@dataclass
class _Run:
    done: list[Action] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)  # names that could not be restored
    blame: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def error(self, target: str, exc: Exception | str, *, names: tuple[str, ...] = ()) -> None:
        message = _message(exc) if isinstance(exc, Exception) else exc
        self.errors.append({"target": target, "error": message})
        for name in names or (target,):
            self.blame[name].append(f"{target}: {message}")
        log.error("reconcile: %s: %s", target, message)


def _message(exc: Exception) -> str:
    if isinstance(exc, LastmileError):
        return exc.message
    if not isinstance(exc, OSError):  # a bug, not a state of the system: keep the traceback
        log.error("reconcile: unexpected error", exc_info=exc)
    return f"{type(exc).__name__}: {exc}"


def reconcile(platform: Platform, *, dry_run: bool = False) -> dict[str, Any]:
    """Compare the store's live deployments with the repository (by content hashes), Triton
    (what is loaded and ready) and the gateway (its routes), and repair what differs.

    Returns ``{"dry_run", "actions": [{"kind", "target", "reason"}], "errors": [{"target",
    "error"}], "in_sync"}``: with ``dry_run`` the actions it would take (nothing is changed),
    else those it took; ``in_sync`` is true when there was nothing to do and nothing wrong.
    """
    with platform.deploy_lock:
        writer = RepositoryWriter(platform.settings.repository_dir)
        run = _Run()
        with platform.session() as session:
            desired = _desired(platform, session, writer)
        run.errors += desired.errors
        seen = _observe(platform, writer, desired, run)
        actions = drift.plan(desired.wants, seen)
        actions = _drop_unrepairable(actions, desired, seen, run, platform.digests)
        if dry_run:
            run.done = actions
        else:
            _carry_out(platform, writer, desired, seen, actions, run)
            if seen.ready is not None:
                _record(platform, desired, run)
    return {
        "dry_run": dry_run,
        "actions": [a.to_dict() for a in run.done],
        "errors": run.errors,
        "in_sync": not run.done and not run.errors,
    }


# -- what the store wants ---------------------------------------------------------------------
def _desired(platform: Platform, session: Any, writer: RepositoryWriter) -> _Desired:
    live = serving.served_specs(session)
    by_ws: dict[int, list[tuple[serving.Served, PipelineSpec, str]]] = defaultdict(list)
    for dep, spec in live:
        pipe = session.get(store.Pipeline, dep.pipeline_id)
        by_ws[pipe.workspace_id].append((dep, spec, pipe.name))
    out = _Desired(Wants(models={}), {}, {}, defaultdict(set), [], defaultdict(list))
    wanted: dict[str, Wanted] = {}
    protected: set[str] = set()

    def fail(ws: str, dep: serving.Served, pipeline: str, exc: Exception) -> None:
        label, message = f"{ws}/{pipeline}", _message(exc)
        out.failed[label].append(message)
        out.errors.append({"target": label, "error": f"cannot be built from the store: {message}"})
        protected.update([dep.ensemble, *dep.triton_models])  # unknown is not unwanted

    for ws_id, items in sorted(by_ws.items()):
        ws = session.get(store.Workspace, ws_id)
        good = []
        for dep, spec, pipeline in items:
            try:
                deployments.collect_models(session, ws, [spec], [dep.prefix])
                good.append((dep, spec, pipeline))
            except Exception as exc:  # one deployment's problem never stops the others
                fail(ws.name, dep, pipeline, exc)
        try:
            needed = deployments.collect_models(
                session, ws, [spec for _, spec, _ in good], [dep.prefix for dep, _, _ in good]
            )
        except LastmileError as exc:  # versions of one model that cannot share a config
            for dep, _spec, pipeline in good:
                fail(ws.name, dep, pipeline, exc)
            continue
        unbuilt: dict[str, Exception] = {}
        for item in needed.values():
            try:
                config = deployments.model_config_for(platform, item)
                wanted[item.triton_name] = _wanted_model(writer, item, config)
                out.models[item.triton_name] = (item, config)
            except Exception as exc:
                unbuilt[item.triton_name] = exc
        for dep, spec, pipeline in good:
            label = f"{ws.name}/{pipeline}"
            uses = tuple(sorted(deployments.step_models(ws.name, spec, dep.prefix)))
            for name in (dep.ensemble, *uses):
                out.users[name].add(label)
            if broken := [unbuilt[name] for name in uses if name in unbuilt]:
                fail(ws.name, dep, pipeline, broken[0])
                continue
            try:
                config = deployments.ensemble_config_for(
                    platform, ws.name, spec, dep.ensemble, needed, dep.prefix
                )
            except Exception as exc:
                fail(ws.name, dep, pipeline, exc)
                continue
            out.ensembles[dep.ensemble] = config
            versions = list(config.version_policy.specific.versions) or [1]
            wanted[dep.ensemble] = Wanted(
                name=dep.ensemble,
                config=writer.config_text(dep.ensemble, config),
                versions={v: {} for v in versions},
                ensemble=True,
                uses=uses,
            )
    routes = None
    if platform.triton is not None and platform.gateway_admin_url:
        routes = serving.build_table(platform, session).to_dict()["routes"]
    wanted = {k: v for k, v in wanted.items() if k not in protected}
    out.wants = Wants(models=wanted, routes=routes, protected=frozenset(protected))
    return out


def _wanted_model(writer: RepositoryWriter, item: deployments._Needed, config: Any) -> Wanted:
    versions = set(item.files)
    extras = deployments.version_extras(config, versions) or {}
    filename = RepositoryWriter.model_file_name(config)
    files = {
        v: {filename: item.digests[v], **{n: sha256_bytes(d) for n, d in extras.get(v, {}).items()}}
        for v in sorted(versions)
    }
    text = writer.config_text(item.triton_name, config)
    return Wanted(name=item.triton_name, config=text, versions=files)


# -- what the system holds ----------------------------------------------------------------------
def _inspect(writer: RepositoryWriter, name: str, digests: DigestCache) -> Published:
    final = writer.root / name
    if final.is_symlink() or not final.is_dir():
        return Published(name, is_dir=False, config=None, versions={})
    config_path = final / "config.pbtxt"
    config = config_path.read_bytes() if config_path.is_file() else None
    versions = {
        v: tree_digest(folder, digests) if not folder.is_symlink() else {"(a symlink)": ""}
        for v, folder in writer.version_folders(name).items()
    }
    return Published(name, is_dir=True, config=config, versions=versions)


@contextmanager
def _client(platform: Platform, timeout_s: float) -> Iterator[FleetClient]:
    assert platform.triton is not None
    with platform.triton.client(timeout_s) as client:
        yield client


def _observe(platform: Platform, writer: RepositoryWriter, desired: _Desired, run: _Run) -> Seen:
    repository = {}
    for name in writer.entries():
        if drift.is_owned_name(name):
            try:
                repository[name] = _inspect(writer, name, platform.digests)
            except OSError as exc:  # unreadable: as good as missing (a rewrite replaces it)
                run.error(name, exc)
    ready: dict[str, frozenset[int]] | None = None
    if platform.triton is None:
        run.error("triton", "no Triton server is attached to this control plane")
    else:
        try:
            with _client(platform, platform.settings.triton_request_timeout_s) as client:
                ready = _ready_versions(client, desired.wants)
        except LastmileError as exc:
            run.error("triton", exc)
    routes = None
    if desired.wants.routes is not None and platform.gateway_admin_url:
        try:
            routes = _gateway_routes(platform)
        except LastmileError as exc:
            run.error("gateway", exc)
    return Seen(repository=repository, leftovers=writer.leftovers(), ready=ready, routes=routes)


def _ready_versions(client: FleetClient, wants: Wants) -> dict[str, frozenset[int]]:
    """Ready versions per model, from Triton's repository index; a wanted model the index does
    not list (pushed to a Triton without our disk) is asked about version by version."""
    ready: dict[str, set[int]] = defaultdict(set)
    for entry in client.repository_index():
        if entry.get("state") == "READY" and str(entry.get("version", "")).isdigit():
            ready[str(entry["name"])].add(int(entry["version"]))
    for name, want in wants.models.items():
        if name not in ready:
            found = {v for v in want.versions if client.is_model_ready(name, str(v))}
            if found:
                ready[name] = found
    return {name: frozenset(versions) for name, versions in ready.items()}


def _gateway_routes(platform: Platform) -> dict[str, Any]:
    try:
        response = httpx.get(
            f"{platform.gateway_admin_url}/routes",
            headers=platform.gateway_admin_headers(),
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise GatewayError(f"the gateway's routing table could not be read: {exc}") from exc
    if response.status_code != 200:
        raise GatewayError(
            f"the gateway refused to show its routing table ({response.status_code})"
        )
    try:
        routes = response.json().get("routes") or {}
    except ValueError as exc:
        raise GatewayError("the gateway's routing table is not JSON") from exc
    if not isinstance(routes, dict):
        raise GatewayError("the gateway's routing table has no routes object")
    return routes


# -- what cannot be repaired -------------------------------------------------------------------
def _model_of(target: str) -> tuple[str, int | None]:
    name, _, rest = target.partition("/")
    return name, int(rest) if rest.isdigit() else None


def _stored_file_problem(
    item: deployments._Needed, version: int, digests: DigestCache
) -> str | None:
    path, expected = item.files[version], item.digests.get(version)
    if not path.is_file():
        return f"its stored file {path} is missing"
    if expected is not None and (actual := digests.sha256(path)) != expected:
        return f"its stored file {path} is damaged (sha256 {actual}, content address {expected})"
    return None


def _drop_unrepairable(
    actions: list[Action], desired: _Desired, seen: Seen, run: _Run, digests: DigestCache
) -> list[Action]:
    """A version to rewrite whose stored file is missing or damaged cannot be repaired: its
    model is left as it is (Triton may still serve what it loaded) and reported, and so are
    the ensembles that chain it (not reloaded)."""
    to_write: dict[str, set[int]] = defaultdict(set)
    for action in actions:
        name, version = _model_of(action.target)
        if action.kind != "rewrite" or name not in desired.models:
            continue
        if action.target == name:  # the whole model is missing
            to_write[name] |= set(desired.models[name][0].files)
        elif version is not None:
            to_write[name].add(version)
    for name, versions in sorted(to_write.items()):
        item = desired.models[name][0]
        for version in sorted(versions):
            problem = _stored_file_problem(item, version, digests)
            if problem is not None:
                users = ", ".join(sorted(desired.users.get(name, ()))) or "nothing"
                run.error(
                    f"{name}/{version}",
                    f"cannot be repaired: {problem} (used by {users})",
                    names=(name,),
                )
                run.broken.add(name)
    if not run.broken:
        return actions
    blocked = set(run.broken)
    for want in desired.wants.models.values():
        if steps := sorted(run.broken & set(want.uses)):
            blocked.add(want.name)
            if any(a.kind == "load" and a.target == want.name for a in actions):
                run.error(want.name, f"not reloaded: its step {', '.join(steps)} is not restored")

    def keep(action: Action) -> bool:
        name = _model_of(action.target)[0]
        if name not in blocked or action.kind in ("unload", "push_routes"):
            return True
        # an ensemble's own files can still be rewritten; nothing of a broken model is
        return action.kind == "rewrite" and name not in run.broken

    return [a for a in actions if keep(a)]


# -- carrying it out ------------------------------------------------------------------------------
def _carry_out(
    platform: Platform,
    writer: RepositoryWriter,
    desired: _Desired,
    seen: Seen,
    actions: list[Action],
    run: _Run,
) -> None:
    failed: set[str] = set()  # names whose repair failed: nothing that depends on them runs
    written: set[str] = set()
    removed_versions: set[str] = set()
    cleaned: set[str] = set()
    if any(a.kind == "remove" and a.target.startswith(".") for a in actions):
        cleaned = set(writer.remove_leftovers())
    client: FleetClient | None = None
    if platform.triton is not None and seen.ready is not None:
        client = platform.triton.client(platform.settings.triton_load_timeout_s)
    try:
        for action in actions:
            name, version = _model_of(action.target)
            try:
                if action.kind == "remove" and action.target.startswith("."):
                    if action.target not in cleaned:
                        continue  # a writer took it up meanwhile, or it is gone
                elif action.kind == "rewrite":
                    if name in written or name in failed:
                        continue
                    _rewrite(writer, desired, seen, name)
                    written.add(name)
                elif action.kind == "load":
                    _check_loadable(desired.wants.models[name], failed)
                    assert client is not None
                    # restores what a replica lacks (it restarted, or a load failed there):
                    # the replicas that serve every wanted version keep serving, unreloaded
                    versions = desired.wants.models[name].versions
                    deployments._load(platform, client.only_where_missing(versions), writer, name)
                elif action.kind == "remove" and version is not None:
                    if name in failed or name in removed_versions:
                        continue
                    writer.remove_versions(name, set(desired.wants.models[name].versions))
                    removed_versions.add(name)
                elif action.kind == "push_routes":
                    serving.push_routes(platform)
                elif action.kind == "unload":
                    assert client is not None
                    client.unload_model(name)
                elif action.kind == "remove":
                    writer.remove_model(name)
            except Exception as exc:  # one model's failure never stops the others' repair
                failed.add(name)
                run.error(action.target, exc, names=(name,))
                continue
            log.warning("reconcile: %s %s (%s)", action.kind, action.target, action.reason)
            run.done.append(action)
    finally:
        if client is not None:
            client.close()


def _check_loadable(want: Wanted, failed: set[str]) -> None:
    if want.name in failed:
        raise LastmileError("not loaded: its files could not be restored")
    if steps := sorted(failed & set(want.uses)):
        raise LastmileError(f"not loaded: its step {', '.join(steps)} could not be restored")


def _rewrite(writer: RepositoryWriter, desired: _Desired, seen: Seen, name: str) -> None:
    have = seen.repository.get(name)
    if have is not None and not have.is_dir:
        writer.remove_model(name)
    if name in desired.ensembles:
        writer.write_ensemble(name, desired.ensembles[name], repair=True)
        return
    item, config = desired.models[name]
    versions = set(item.files)
    writer.write_model(
        name,
        config,
        dict(item.files),
        extra_files=published_extras(config, versions),  # with the bytecode blocker
        repair=True,
        expected_sha256=item.digests,
    )


def _record(platform: Platform, desired: _Desired, run: _Run) -> None:
    """Each live deployment's ``error``: what stops it from being restored, or nothing."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for label, problems in desired.failed.items():
        by_label[label] += problems
    for name, problems in run.blame.items():
        for label in desired.users.get(name, ()):
            by_label[label] += problems
    with platform.session() as session:
        changed = False
        for dep in store.list_deployments(session):
            if dep.state != "live":
                continue
            pipe = session.get(store.Pipeline, dep.pipeline_id)
            ws = session.get(store.Workspace, pipe.workspace_id)  # type: ignore[union-attr]
            problems = by_label.get(f"{ws.name}/{pipe.name}", [])  # type: ignore[union-attr]
            message = "; ".join(dict.fromkeys(problems))[:4000] or None
            if dep.error != message:
                dep.error = message
                session.add(dep)
                changed = True
        if changed:
            session.commit()
