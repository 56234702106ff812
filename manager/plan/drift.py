"""What differs between the state the store implies and the state the system is in: a pure
diff (no I/O) from which the reconciler takes its actions.

``Wants`` is derived from the store (live deployments, their models' stored files, the configs
the builder makes, the gateway's routing table); ``Seen`` is what the repository, Triton and
the gateway hold. ``plan(wants, seen)`` returns the actions, in the order they must be carried
out: staging leftovers removed, damaged or missing files rewritten, models loaded before the
ensembles that chain them (an ensemble whose step is reloaded is reloaded too: Triton unloads
it), routes pushed once what they point at is loaded, then orphans unloaded and removed.

Only names the manager makes (``<ws>.<model>``, ``<ws>.<pipeline>.v<N>``) are ever unloaded or
removed, and never a ``protected`` one (a live deployment that could not be built from the
store: unknown is not unwanted). What is unknown (``Seen.ready`` or ``Seen.routes`` None,
because Triton or the gateway did not answer) produces no action.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from manager.names import NAME_RE
from rollout.routing import RoutingTable

__all__ = ["Action", "Published", "Seen", "Wanted", "Wants", "is_owned_name", "plan"]

Kind = Literal["remove", "rewrite", "load", "unload", "push_routes"]

_PART = NAME_RE.pattern.strip("^$")
_OWNED_RE = re.compile(rf"^{_PART}\.{_PART}(\.v[1-9][0-9]{{0,17}}(\.{_PART})?)?$")
CONFIG_FILENAME = "config.pbtxt"


def is_owned_name(name: str) -> bool:
    """A repository or Triton name of the manager's scheme: ``<ws>.<model>`` (a registered
    model), ``<ws>.<pipeline>.v<N>`` (a pipeline version's ensemble) or
    ``<ws>.<pipeline>.v<N>.<model>`` (a step model private to that version)."""
    return bool(_OWNED_RE.fullmatch(name))


@dataclass(frozen=True)
class Action:
    kind: Kind
    target: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "target": self.target, "reason": self.reason}


@dataclass(frozen=True)
class Wanted:
    """One Triton model or ensemble as the store implies it."""

    name: str
    config: bytes  # config.pbtxt, byte for byte as the writer would write it
    versions: Mapping[int, Mapping[str, str]]  # version folder → file → sha256
    ensemble: bool = False
    uses: tuple[str, ...] = ()  # an ensemble's step models


@dataclass(frozen=True)
class Wants:
    models: Mapping[str, Wanted]
    routes: Mapping[str, Any] | None = None  # route name → route; None: no gateway to check
    protected: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Published:
    """What is on disk under one name of the repository."""

    name: str
    is_dir: bool
    config: bytes | None  # None: no config.pbtxt
    versions: Mapping[int, Mapping[str, str]]  # version folder → file → sha256


@dataclass(frozen=True)
class Seen:
    repository: Mapping[str, Published]  # owned names found at the top of the repository
    leftovers: Sequence[str] = ()  # staging folders nobody uses
    ready: Mapping[str, frozenset[int]] | None = None  # Triton: ready versions; None: unknown
    routes: Mapping[str, Any] | None = None  # the gateway's routes; None: unknown


def _files_reason(want: Mapping[str, str], have: Mapping[str, str]) -> str:
    parts = []
    for name in sorted(want):
        if name not in have:
            parts.append(f"{name} is missing")
        elif have[name] != want[name]:
            parts.append(f"{name} differs from the stored file (damaged or truncated)")
    parts += [f"unexpected file {name}" for name in sorted(set(have) - set(want))]
    return "; ".join(parts)


def _disk_diff(want: Wanted, have: Published | None) -> list[tuple[str, str]]:
    """(target, reason) of every part of ``want`` the repository does not hold as it should."""
    if have is None:
        return [(want.name, "missing from the repository")]
    if not have.is_dir:
        return [(want.name, "is not a folder")]
    out = []
    for version, files in sorted(want.versions.items()):
        got = have.versions.get(version)
        if got is None:
            out.append((f"{want.name}/{version}", "version folder missing"))
        elif dict(got) != dict(files):
            out.append((f"{want.name}/{version}", _files_reason(files, got)))
    if have.config is None:
        out.append((f"{want.name}/{CONFIG_FILENAME}", "missing"))
    elif have.config != want.config:
        out.append((f"{want.name}/{CONFIG_FILENAME}", "differs from the config the store implies"))
    return out


def route_key(routes: Mapping[str, Any]) -> dict[str, Any]:
    """Routes as comparable values (rollout.routing's Route, or the raw value when it does not
    parse): the generation, key order and 95 vs 95.0 do not matter."""
    out: dict[str, Any] = {}
    for name, route in routes.items():
        try:
            table = RoutingTable.from_json({"generation": 0, "routes": {name: route}})
            out[name] = table.routes[name]
        except ValueError:
            out[name] = ("unparsable", repr(route))
    return out


def _routes_reason(want: Mapping[str, Any], have: Mapping[str, Any]) -> str | None:
    wanted, held = route_key(want), route_key(have)
    if wanted == held:
        return None
    parts = []
    if missing := sorted(set(wanted) - set(held)):
        parts.append(f"missing: {', '.join(missing)}")
    if extra := sorted(set(held) - set(wanted)):
        parts.append(f"not live: {', '.join(extra)}")
    if changed := sorted(n for n in set(wanted) & set(held) if wanted[n] != held[n]):
        parts.append(f"different variants or weights: {', '.join(changed)}")
    return "the gateway's routes differ from the live deployments (" + "; ".join(parts) + ")"


def _load_reason(
    want: Wanted, rewritten: set[str], ready: Mapping[str, frozenset[int]], reloaded: set[str]
) -> str | None:
    if want.name in rewritten:
        return "its files were rewritten"
    have = ready.get(want.name, frozenset())
    if not have:
        return "not loaded on Triton"
    if have != set(want.versions):
        return f"Triton serves versions {sorted(have)}, the store wants {sorted(want.versions)}"
    if steps := [m for m in want.uses if m in reloaded]:
        return f"its step {', '.join(steps)} is reloaded (Triton unloads the ensemble then)"
    return None


def plan(wants: Wants, seen: Seen) -> list[Action]:
    """The actions that bring ``seen`` to ``wants``, in the order to carry them out."""
    actions = [
        Action("remove", path, "staging folder left by an interrupted write")
        for path in seen.leftovers
    ]
    # composing models before the ensembles that chain them
    ordered = sorted(
        (w for w in wants.models.values() if w.name not in wants.protected),
        key=lambda w: (w.ensemble, w.name),
    )
    rewritten: set[str] = set()
    for want in ordered:
        for target, reason in _disk_diff(want, seen.repository.get(want.name)):
            actions.append(Action("rewrite", target, reason))
            rewritten.add(want.name)
    if seen.ready is not None:
        reloaded: set[str] = set()
        for want in ordered:
            why = _load_reason(want, rewritten, seen.ready, reloaded)
            if why is not None:
                actions.append(Action("load", want.name, why))
                reloaded.add(want.name)
    for want in ordered:  # after the new config is loaded: Triton no longer serves them
        have = seen.repository.get(want.name)
        if have is None or not have.is_dir:
            continue
        for version in sorted(set(have.versions) - set(want.versions)):
            actions.append(
                Action("remove", f"{want.name}/{version}", "version no live deployment uses")
            )
    if wants.routes is not None and seen.routes is not None:
        differs = _routes_reason(wants.routes, seen.routes)
        if differs is not None:
            actions.append(Action("push_routes", "gateway", differs))

    def orphan(name: str) -> bool:
        return is_owned_name(name) and name not in wants.models and name not in wants.protected

    def ensembles_first(name: str) -> tuple[bool, str]:
        return (name.count(".") != 2, name)

    if seen.ready is not None:
        for name in sorted(seen.ready, key=ensembles_first):
            if seen.ready[name] and orphan(name):
                actions.append(Action("unload", name, "loaded, but no live deployment uses it"))
    for name in sorted(seen.repository, key=ensembles_first):
        if orphan(name):
            actions.append(Action("remove", name, "no live deployment uses it"))
    return actions
