"""Structural checks for the custom resources deploy/ uses (their CRDs are not in the core
schemas): the fields we write, their types, which are required, and no unknown field.

A shape is a Python type (``str``, ``int``, ``bool``), ``ANY``, a ``OneOf`` of literal values, a
``Pattern``, a one-element list (a list of that shape), ``MapOf(shape)`` (free keys), or a
dict of field name -> shape where ``Required(shape)`` marks a field that must be there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

ANY = object()


@dataclass(frozen=True)
class Required:
    shape: Any


@dataclass(frozen=True)
class OneOf:
    values: tuple[str, ...]


@dataclass(frozen=True)
class Pattern:
    regex: str
    meaning: str


@dataclass(frozen=True)
class MapOf:
    shape: Any


DURATION = Pattern(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
    "a Prometheus duration such as 30s or 1m",
)
LABEL_SELECTOR = {
    "matchLabels": MapOf(str),
    "matchExpressions": [
        {
            "key": Required(str),
            "operator": Required(OneOf(("In", "NotIn", "Exists", "DoesNotExist"))),
            "values": [str],
        }
    ],
}
RELABEL_ACTIONS = ("replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap",
                   "labeldrop", "labelkeep", "lowercase", "uppercase")  # fmt: skip
RELABELING = {
    "sourceLabels": [str],
    "separator": str,
    "targetLabel": str,
    "regex": str,
    "modulus": int,
    "replacement": str,
    "action": OneOf(RELABEL_ACTIONS + tuple(a.capitalize() for a in RELABEL_ACTIONS)),
}
METADATA = {
    "name": Required(str),
    "namespace": str,
    "labels": MapOf(str),
    "annotations": MapOf(str),
}
SERVICE_MONITOR_ENDPOINT = {
    "port": str,
    "targetPort": ANY,
    "path": str,
    "scheme": OneOf(("http", "https")),
    "params": MapOf([str]),
    "interval": DURATION,
    "scrapeTimeout": DURATION,
    "honorLabels": bool,
    "honorTimestamps": bool,
    "relabelings": [RELABELING],
    "metricRelabelings": [RELABELING],
    "tlsConfig": ANY,
    "authorization": ANY,
    "basicAuth": ANY,
    "bearerTokenSecret": ANY,
    "followRedirects": bool,
    "enableHttp2": bool,
    "filterRunning": bool,
}
SERVICE_MONITOR = {
    "apiVersion": Required(str),
    "kind": Required(str),
    "metadata": Required(METADATA),
    "spec": Required(
        {
            "selector": Required(LABEL_SELECTOR),
            "namespaceSelector": {"any": bool, "matchNames": [str]},
            "endpoints": Required([SERVICE_MONITOR_ENDPOINT]),
            "jobLabel": str,
            "targetLabels": [str],
            "podTargetLabels": [str],
            "sampleLimit": int,
        }
    ),
}

# (apiVersion, kind) -> shape
CRD_SHAPES: dict[tuple[str, str], Any] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
}


def shape_errors(value: Any, shape: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, what is wrong) for every place ``value`` does not fit ``shape``."""
    where = path or "(top level)"
    if shape is ANY:
        return
    if isinstance(shape, Required):
        yield from shape_errors(value, shape.shape, path)
    elif isinstance(shape, OneOf):
        if value not in shape.values:
            yield where, f"{value!r} is not one of {', '.join(shape.values)}"
    elif isinstance(shape, Pattern):
        if not isinstance(value, str) or not re.fullmatch(shape.regex, value):
            yield where, f"{value!r} is not {shape.meaning}"
    elif isinstance(shape, MapOf):
        if not isinstance(value, Mapping):
            yield where, f"expected a map, got {type(value).__name__}"
            return
        for key, item in value.items():
            yield from shape_errors(item, shape.shape, f"{path}.{key}" if path else str(key))
    elif isinstance(shape, list):
        if not isinstance(value, list):
            yield where, f"expected a list, got {type(value).__name__}"
            return
        for i, item in enumerate(value):
            yield from shape_errors(item, shape[0], f"{path}[{i}]")
    elif isinstance(shape, dict):
        yield from _object_errors(value, shape, path)
    elif shape is int:
        if not isinstance(value, int) or isinstance(value, bool):
            yield where, f"expected an integer, got {value!r}"
    elif not isinstance(value, shape):
        yield where, f"expected {shape.__name__}, got {type(value).__name__} {value!r}"


def _object_errors(value: Any, shape: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    where = path or "(top level)"
    if not isinstance(value, Mapping):
        yield where, f"expected an object, got {type(value).__name__}"
        return
    for key, item in value.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in shape:
            yield sub, f"unknown field {key!r} (known: {', '.join(sorted(shape))})"
        else:
            yield from shape_errors(item, shape[key], sub)
    for key, field in shape.items():
        if isinstance(field, Required) and key not in value:
            yield where, f"required field {key!r} is missing"
