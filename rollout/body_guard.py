"""Checks on an HTTP inference request body before it goes to Triton.

They run on the hot path, so each starts with a test that costs next to nothing on an ordinary
request (no Content-Encoding; `b"shared_memory" in header`; the first byte is `{`) and decodes
JSON only when that test fires:

- compressed bodies (`Content-Encoding: gzip | deflate`, what tritonclient's
  request_compression_algorithm sends) are inflated here with a bound: Triton inflates without
  one, and a 2 MiB gzip bomb killed it. The inflated body goes on without Content-Encoding.
- shared memory is never offered through the gateway (DESIGN §5): the region names refer to
  memory of Triton's host, which no client of the gateway may name.
- a body that is not a JSON object at all is a 400 here (Triton 2.51 answers 500).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

SHM_MARKER = b"shared_memory"
SHM_REFUSED = (
    "shared memory is not offered through the gateway: send the tensor data in the request"
)
NOT_JSON = (
    "the request body is not a JSON object: a KServe v2 inference request is JSON "
    '({"inputs": [...]}), optionally followed by binary tensor data'
)
INFLATE_STEP = 1024 * 1024  # bytes of output per zlib call: bounds memory past the limit
INLINE_INFLATE_BYTES = 1024 * 1024  # inflated on the event loop; more goes to a thread
_GZIP_MAGIC = b"\x1f\x8b"
_CODINGS = {b"gzip": b"gzip", b"x-gzip": b"gzip", b"deflate": b"deflate"}


class BodyRefused(Exception):
    """The body cannot be forwarded; answer `status` with `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def content_coding(value: bytes) -> bytes | None:
    """b"gzip" / b"deflate" for a coding the gateway inflates, b"" for identity, None for
    anything else (a 415)."""
    coding = value.strip().lower()
    if coding in (b"", b"identity"):
        return b""
    return _CODINGS.get(coding)


def unsupported_coding(value: bytes) -> str:
    shown = value[:64].decode("latin-1")
    return f"unsupported Content-Encoding {shown!r}: send gzip, deflate or an uncompressed body"


class Inflater:
    """Inflates a gzip or deflate body in steps, refusing it once it would exceed `limit`.

    `run(budget)` may be called on the event loop with a small budget, then (if the body is
    bigger) once more in a worker thread with no budget: zlib releases the GIL meanwhile.
    """

    __slots__ = ("_d", "_input", "_out", "coding", "limit", "size")

    def __init__(self, coding: bytes, chunks: list[bytes], limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.size = 0
        self._input = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._out: list[bytes] = []
        self._d = self._decompressor(self._input)

    def _decompressor(self, data: bytes) -> Any:
        if self.coding == b"gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is zlib-wrapped (RFC 9110, and what tritonclient sends); some clients send
        # raw deflate: a zlib header is two bytes whose big-endian value is a multiple of 31.
        zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)

    def run(self, budget: int | None = None) -> bool:
        """Inflate up to about `budget` more bytes (None: all). True once the body is whole;
        raises BodyRefused (413 over the limit, 400 for a corrupt or truncated stream)."""
        produced = 0
        d = self._d
        while True:
            step = min(self.limit + 1 - self.size, INFLATE_STEP)
            try:
                out = d.decompress(self._input, step)
            except zlib.error as exc:
                raise BodyRefused(
                    400, f"the request body is not valid {self.coding.decode()} data ({exc})"
                ) from None
            self._input = d.unconsumed_tail
            if out:
                self._out.append(out)
                self.size += len(out)
                produced += len(out)
                if self.size > self.limit:
                    self._out.clear()
                    raise BodyRefused(
                        413,
                        f"the request body inflates to more than {self.limit} bytes "
                        "(the gateway's --max-inflated-bytes)",
                    )
            if d.eof:
                rest = d.unused_data
                if not rest:
                    return True
                if self.coding == b"gzip" and rest.startswith(_GZIP_MAGIC):  # another member
                    d = self._d = self._decompressor(rest)
                    self._input = rest
                    continue
                raise BodyRefused(
                    400, f"the request body has data after the end of its {self.coding.decode()} "
                    "stream",
                )  # fmt: skip
            if not self._input and len(out) < step:
                raise BodyRefused(
                    400, f"the request body is a truncated {self.coding.decode()} stream"
                )
            if budget is not None and produced >= budget:
                return False

    def result(self) -> bytes:
        out, self._out = self._out, []
        return out[0] if len(out) == 1 else b"".join(out)


def _contains(chunks: list[bytes], needle: bytes, end: int) -> bool:
    """Whether `needle` occurs in the first `end` bytes of the concatenated `chunks`."""
    if len(chunks) == 1:
        return chunks[0].find(needle, 0, end) >= 0
    overlap = len(needle) - 1
    offset = 0
    tail = b""  # the last `overlap` bytes seen: a match may straddle two chunks
    for chunk in chunks:
        if offset >= end:
            break
        stop = min(len(chunk), end - offset)
        if chunk.find(needle, 0, stop) >= 0:
            return True
        if tail and needle in tail + chunk[: min(overlap, stop)]:
            return True
        # a chunk shorter than the needle extends the previous tail instead of replacing it
        tail = chunk[stop - overlap : stop] if stop >= overlap else (tail + chunk[:stop])[-overlap:]
        offset += len(chunk)
    return False


def _prefix(chunks: list[bytes], end: int) -> bytes:
    if len(chunks) == 1:
        return chunks[0][:end]
    out, size = [], 0
    for chunk in chunks:
        if size >= end:
            break
        out.append(chunk[: end - size])
        size += len(out[-1])
    return b"".join(out)


def _names_shared_memory(params: Any) -> bool:
    return isinstance(params, dict) and any(
        isinstance(key, str) and key.startswith("shared_memory") for key in params
    )


def uses_shared_memory(request: Any) -> bool:
    """Whether a decoded inference request carries a shared_memory* parameter anywhere."""
    if not isinstance(request, dict):
        return False
    if _names_shared_memory(request.get("parameters")):
        return True
    for key in ("inputs", "outputs"):
        tensors = request.get(key)
        if isinstance(tensors, list) and any(
            isinstance(t, dict) and _names_shared_memory(t.get("parameters")) for t in tensors
        ):
            return True
    return False


def check_infer_body(chunks: list[bytes], size: int, header_length: int | None) -> str | None:
    """None when the body may go to Triton, else the 400 message.

    `header_length`: the Inference-Header-Content-Length (the JSON part of a binary tensor
    request; 0 is Triton's raw binary request, no JSON at all), None for a pure JSON body.
    """
    if not chunks or (header_length is not None and header_length <= 0):
        return None  # empty, raw binary (0) or a bad length: Triton answers those itself
    end = size if header_length is None else min(header_length, size)
    first = chunks[0]
    if first[:1] != b"{":
        lead = first[:64].lstrip()
        if lead and lead[:1] != b"{":
            return NOT_JSON
    if not _contains(chunks, SHM_MARKER, end):
        return None
    try:  # rare: the text is there, maybe only inside tensor data; decode to be sure
        request = json.loads(_prefix(chunks, end))
    except (ValueError, UnicodeDecodeError) as exc:
        return f"the request body is not valid JSON ({exc})"
    return SHM_REFUSED if uses_shared_memory(request) else None
