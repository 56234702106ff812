"""Reading a routing table pushed as JSON (`RoutingTable.from_json`, rollout.routing).

Strict, so that a bad push is refused whole with a message that names the route and the field:
unknown keys are errors, every string is checked to be one, the lists of variants and targets
are bounded before their items are read, and each part is built by the dataclasses of
rollout.routing, whose own checks then apply.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rollout.routing import (
    DEFAULT_STICKY_HEADER,
    MAX_TARGETS,
    MAX_VARIANTS,
    SHADOW_MAX_QUEUE,
    Mirror,
    Route,
    Shadow,
    Sticky,
    Target,
    Variant,
)

_TABLE_KEYS = frozenset({"generation", "routes"})
_ROUTE_KEYS = frozenset(
    {"workspace", "pipeline", "strategy", "variants", "sticky", "shadow", "capture"}
)
_VARIANT_KEYS = frozenset({"name", "version", "weight", "targets"})
_TARGET_KEYS = frozenset({"url", "model", "version", "grpc"})
_STICKY_KEYS = frozenset({"header", "parameter"})
_SHADOW_KEYS = frozenset({"mirrors", "timeout_s", "max_queue", "tolerance"})
_MIRROR_KEYS = frozenset({"variant", "sample"})


def parse_table(data: bytes | str | Mapping[str, Any]) -> tuple[int, list[Route]]:
    """The generation and routes of a table as pushed by the control plane (JSON text or
    its parsed object), each route validated; ValueError names the route and field."""
    if isinstance(data, (bytes, bytearray, str)):
        try:
            data = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"routing table is not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ValueError("routing table must be a JSON object")
    _reject_unknown(data, _TABLE_KEYS, "routing table")
    generation = data.get("generation")
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise ValueError(f"routing table: generation must be an integer >= 0, got {generation!r}")
    routes_raw = data.get("routes")
    if not isinstance(routes_raw, Mapping):
        raise ValueError("routing table: routes must be an object of route key -> route")
    routes = []
    for key, raw in routes_raw.items():
        route = _parse_route(str(key), raw)
        if route.key != key:
            raise ValueError(
                f"route {key!r}: its key must be '<workspace>/<pipeline>' of the route, "
                f"here {route.key!r}"
            )
        routes.append(route)
    return generation, routes


def _reject_unknown(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _object(raw: Any, allowed: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be an object")
    _reject_unknown(raw, allowed, where)
    return raw


def _parse_route(key: str, raw: Any) -> Route:
    where = f"route {key!r}"
    obj = _object(raw, _ROUTE_KEYS, where)
    variants_raw = obj.get("variants")
    if not isinstance(variants_raw, list) or not variants_raw:
        raise ValueError(f"{where}: variants must be a non-empty list")
    if len(variants_raw) > MAX_VARIANTS:
        raise ValueError(f"{where}: at most {MAX_VARIANTS} variants, got {len(variants_raw)}")
    try:
        variants = tuple(
            _parse_variant(f"{where}: variants[{i}]", item) for i, item in enumerate(variants_raw)
        )
        sticky = None
        if obj.get("sticky") is not None:
            s = _object(obj["sticky"], _STICKY_KEYS, "sticky")
            sticky = Sticky(
                header=_string(s, "header", "sticky", DEFAULT_STICKY_HEADER),
                parameter=_string(s, "parameter", "sticky", ""),
            )
        shadow = None
        if obj.get("shadow") is not None:
            s = _object(obj["shadow"], _SHADOW_KEYS, "shadow")
            mirrors_raw = s.get("mirrors")
            if not isinstance(mirrors_raw, list):
                raise ValueError("shadow.mirrors must be a list")
            mirrors = tuple(
                Mirror(
                    variant=_string(_object(m, _MIRROR_KEYS, "mirror"), "variant", "mirror", ""),
                    sample=m.get("sample", 1.0),
                )
                for m in mirrors_raw
            )
            shadow = Shadow(
                mirrors=mirrors,
                timeout_s=s.get("timeout_s", 5.0),
                max_queue=s.get("max_queue", SHADOW_MAX_QUEUE),
                tolerance=s.get("tolerance", 1e-5),
            )
        return Route(
            workspace=_string(obj, "workspace", where, ""),
            pipeline=_string(obj, "pipeline", where, ""),
            variants=variants,
            strategy=obj.get("strategy", "weighted"),
            sticky=sticky,
            shadow=shadow,
            capture=obj.get("capture", 0.0),
        )
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def _string(obj: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _parse_variant(where: str, raw: Any) -> Variant:
    obj = _object(raw, _VARIANT_KEYS, where)
    targets_raw = obj.get("targets")
    if not isinstance(targets_raw, list) or not targets_raw:
        raise ValueError(f"{where}.targets must be a non-empty list")
    if len(targets_raw) > MAX_TARGETS:
        raise ValueError(f"{where}: at most {MAX_TARGETS} targets, got {len(targets_raw)}")
    targets = []
    for i, item in enumerate(targets_raw):
        t = _object(item, _TARGET_KEYS, f"{where}.targets[{i}]")
        try:
            targets.append(
                Target(
                    url=_string(t, "url", "target", ""),
                    model=_string(t, "model", "target", ""),
                    version=_string(t, "version", "target", ""),
                    grpc=_string(t, "grpc", "target", ""),
                )
            )
        except ValueError as exc:
            raise ValueError(f"{where}.targets[{i}]: {exc}") from None
    version = obj.get("version")
    weight = obj.get("weight", 0)
    if isinstance(weight, int) and not isinstance(weight, bool):
        weight = float(weight)
    try:
        return Variant(
            name=_string(obj, "name", where, ""),
            version=version,  # type: ignore[arg-type]
            weight=weight,
            targets=tuple(targets),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
