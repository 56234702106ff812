"""Stamping an inference response with the variant that answered, at the bytes level.

Clients must see the public pipeline name in ``model_name``, the pipeline version in
``model_version`` (Triton's own is "1" for every ensemble) and ``"lastmile_variant"`` in
``parameters``. Decoding the response to do that would decode the tensors too (a JSON response
carries its data inline, megabytes of numbers), so this module walks only the top-level members
of the JSON object with a few regular expressions, replaces the three values where they are and
inserts the missing ones after ``model_version`` (Triton's order: ``id``, ``model_name``,
``model_version``, ``parameters``, ``outputs``). Any key order is handled; members are never
duplicated. Triton writes ``outputs`` last, so once the names are seen and no ``"parameters"``
text follows, the walk stops at ``outputs`` without scanning the data.

The result is a list of pieces (memoryviews of the original and the new values): the caller
joins or writes them, so the body is copied at most once.
"""

from __future__ import annotations

import json
import re

from rollout.routing import VARIANT_PARAMETER

_WS = rb"[ \t\n\r]*"
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_OPEN_RE = re.compile(_WS + rb"\{" + _WS)
_KEY_RE = re.compile(_WS + b"(" + _STRING + b")" + _WS + b":" + _WS)
_STRING_RE = re.compile(_STRING)
_SCALAR_RE = re.compile(rb"[-+0-9.eE]+|true|false|null")
_TOKEN_RE = re.compile(_STRING + rb"|[\[\]{}]")
_SEP_RE = re.compile(_WS + rb"([,}])")

NAME, VERSION, PARAMETERS = b'"model_name"', b'"model_version"', b'"parameters"'
_OUTPUTS = b'"outputs"'
_QUOTE, _OPEN_BRACE, _OPEN_BRACKET = 0x22, 0x7B, 0x5B
Pieces = list[memoryview | bytes]


def skip_value(buf: bytes, pos: int, end: int) -> int:
    """End offset of the JSON value starting at `pos`, -1 when there is none."""
    if pos >= end:
        return -1
    first = buf[pos]
    if first == _QUOTE:
        match = _STRING_RE.match(buf, pos, end)
        return match.end() if match else -1
    if first in (_OPEN_BRACE, _OPEN_BRACKET):
        depth = 0
        for token in _TOKEN_RE.finditer(buf, pos, end):
            char = buf[token.start()]
            if char == _QUOTE:
                continue
            if char in (_OPEN_BRACE, _OPEN_BRACKET):
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return token.end()
        return -1
    match = _SCALAR_RE.match(buf, pos, end)
    return match.end() if match else -1


def _members(buf: bytes, end: int) -> tuple[int, bool, dict[bytes, tuple[int, int]]] | None:
    """(offset after '{', whether the object has members, value spans of the wanted keys)."""
    opened = _OPEN_RE.match(buf, 0, end)
    if opened is None:
        return None
    start = pos = opened.end()
    spans: dict[bytes, tuple[int, int]] = {}
    if pos < end and buf[pos] == 0x7D:  # "{}"
        return start, False, spans
    while True:
        key_match = _KEY_RE.match(buf, pos, end)
        if key_match is None:
            return None
        key = key_match.group(1)
        value = key_match.end()
        if (
            key == _OUTPUTS
            and NAME in spans
            and VERSION in spans
            and (PARAMETERS in spans or buf.find(PARAMETERS, value, end) < 0)
        ):
            break  # Triton's outputs come last: the tensors are never scanned
        value_end = skip_value(buf, value, end)
        if value_end < 0:
            return None
        if key in (NAME, VERSION, PARAMETERS):
            spans[key] = (value, value_end)
            if len(spans) == 3:
                break
        separator = _SEP_RE.match(buf, value_end, end)
        if separator is None:
            return None
        if separator.group(1) == b"}":
            break
        pos = separator.end()
    return start, True, spans


class VariantStamp:
    """The JSON-encoded values one variant stamps on its responses, built once per table."""

    __slots__ = ("head", "name", "params", "public", "variant", "version")

    def __init__(self, pipeline: str, variant: str, version: int) -> None:
        self.name = variant
        self.public = json.dumps(pipeline).encode()
        self.version = json.dumps(str(version)).encode()
        self.variant = json.dumps(variant).encode()
        self.params = b'{"' + VARIANT_PARAMETER.encode() + b'":' + self.variant + b"}"
        # Triton's usual head, rewritten whole (see `triton_prefix`)
        self.head = (
            b'{"model_name":' + self.public + b',"model_version":' + self.version
            + b',"parameters":' + self.params
        )  # fmt: skip


def triton_prefix(model: str) -> bytes:
    """How Triton starts the response of `model` to a request without an id."""
    return b'{"model_name":' + json.dumps(model).encode() + b',"model_version":"'


def stamp_infer(buf: bytes, end: int, stamp: VariantStamp, prefix: bytes = b"") -> Pieces | None:
    """`buf[:end]` (an inference response's JSON) with model_name, model_version and
    parameters.lastmile_variant set; None when it is not a JSON object (sent on unchanged).

    `prefix` (`triton_prefix` of the target model) enables the fast path for Triton's usual
    layout: name, version, then outputs with no "parameters" anywhere.
    """
    if prefix and buf.startswith(prefix):
        quote = buf.find(b'"', len(prefix), len(prefix) + 24)
        if (
            quote > 0
            and buf.startswith(b',"outputs":', quote + 1)
            and buf.find(PARAMETERS, quote, end) < 0
        ):
            return [stamp.head, memoryview(buf)[quote + 1 : end]]
    found = _members(buf, end)
    if found is None:
        return None
    start, has_members, spans = found
    edits: list[tuple[int, int, bytes]] = []
    if NAME in spans:
        edits.append((*spans[NAME], stamp.public))
    if VERSION in spans:
        edits.append((*spans[VERSION], stamp.version))
    params = stamp.params
    if PARAMETERS in spans:
        low, high = spans[PARAMETERS]
        try:
            decoded = json.loads(buf[low:high])
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            decoded[VARIANT_PARAMETER] = stamp.name
            params = json.dumps(decoded, separators=(",", ":")).encode()
        edits.append((low, high, params))
    missing = [
        key + b":" + value
        for key, value in ((NAME, stamp.public), (VERSION, stamp.version), (PARAMETERS, params))
        if key not in spans
    ]
    if missing:
        anchor = max((spans[k][1] for k in (NAME, VERSION) if k in spans), default=-1)
        if anchor >= 0:  # right after model_version (or model_name), as Triton orders them
            edits.append((anchor, anchor, b"," + b",".join(missing)))
        else:
            text = b",".join(missing)
            edits.append((start, start, text + b"," if has_members else text))
    edits.sort(key=lambda edit: edit[0])
    view = memoryview(buf)
    pieces: Pieces = []
    done = 0
    for low, high, new in edits:
        if low > done:
            pieces.append(view[done:low])
        pieces.append(new)
        done = high
    if done < end:
        pieces.append(view[done:end])
    return pieces


def stamp_metadata(body: bytes, public: str, versions: list[str]) -> bytes | None:
    """Model metadata with the public name and the route's versions; None when not JSON."""
    try:
        meta = json.loads(body)
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    meta["name"] = public
    meta["versions"] = versions
    return json.dumps(meta, separators=(",", ":")).encode()
