"""HTTP load for the gateway benchmark: the two KServe v2 bodies, wrk, and an asyncio driver.

JSON: one FP32 [1, 4] tensor written out in the body. Binary: the binary-tensor extension (a
JSON header of Inference-Header-Content-Length bytes, then the raw tensor) with one FP32
[64, 1024] input (256 KiB) and the output asked for as binary too, so that 256 KiB travels each
way. wrk (C, one thread) reads the body from a file in its Lua script; the asyncio driver (one
coroutine per keep-alive connection, one request in flight) stands in where wrk is missing.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtests._models import latency_stats, run_fast

WIDE_ROWS, WIDE_COLS = 64, 1024
X_SMALL = np.array([[1, 2, 3, 4]], dtype=np.float32)
X_WIDE = (np.arange(WIDE_ROWS * WIDE_COLS, dtype=np.float32) % 97).reshape(WIDE_ROWS, WIDE_COLS)


@dataclass(frozen=True)
class HttpBody:
    """One request body and the headers that describe it."""

    name: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    expected: np.ndarray = field(default_factory=lambda: X_SMALL * 2, compare=False)


def json_body() -> HttpBody:
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    body = json.dumps(doc, separators=(",", ":")).encode()
    return HttpBody("json", body, {"Content-Type": "application/json"})


def binary_body() -> HttpBody:
    raw = X_WIDE.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [WIDE_ROWS, WIDE_COLS],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return HttpBody("binary", head + raw, headers, X_WIDE * 2)


def check_answer(url: str, body: HttpBody, extra: dict[str, str] | None = None) -> dict[str, str]:
    """POST once and verify the output tensor; the answer's model_name and lastmile-variant."""
    request = urllib.request.Request(url, data=body.body, method="POST")
    for key, value in {**body.headers, **(extra or {})}.items():
        request.add_header(key, value)
    with urllib.request.urlopen(request, timeout=30) as resp:
        data = resp.read()
        hlen = resp.headers.get("Inference-Header-Content-Length")
        variant = resp.headers.get("lastmile-variant", "")
    head = json.loads(data[: int(hlen)] if hlen else data)
    out = head["outputs"][0]
    if hlen:
        got = np.frombuffer(data[int(hlen) :], dtype=np.float32).reshape(out["shape"])
    else:
        got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    if not np.array_equal(got, body.expected):
        raise RuntimeError(f"{url}: wrong answer {got.ravel()[:8]}...")
    return {"model_name": str(head.get("model_name", "")), "variant": variant}


# ---- wrk ------------------------------------------------------------------------------------

_WRK_SCRIPT = """\
local f = assert(io.open({path}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d," ..
    "\\"errors\\":%d,\\"non2xx\\":%d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_wrk_script(work: Path, body: HttpBody) -> Path:
    """A wrk Lua script posting `body` (read from a file next to it); its path."""
    data = work / f"body-{body.name}.bin"
    data.write_bytes(body.body)
    headers = "\n".join(f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in body.headers.items())
    script = work / f"wrk-{body.name}.lua"
    script.write_text(_WRK_SCRIPT.format(path=_lua(str(data)), headers=headers))
    return script


def run_wrk(url: str, conns: int, seconds: float, script: Path) -> dict[str, float]:
    """One wrk run (one thread, `conns` keep-alive connections): rps, p50/p99 ms, errors."""
    duration = f"-d{max(1, round(seconds))}s"
    cmd = ["wrk", "-t1", f"-c{conns}", duration, "--timeout", "5s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    match = re.search(r"^BENCH (\{.*\})$", out.stdout, re.M)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(match.group(1))
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["errors"] + raw["non2xx"],
        "requests": raw["requests"],
    }


# ---- asyncio driver -------------------------------------------------------------------------

_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


async def _drive(
    port: int, path: str, body: HttpBody, conns: int, seconds: float
) -> dict[str, float]:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in body.headers.items()
    )
    request = f"{head}Content-Length: {len(body.body)}\r\n\r\n".encode() + body.body
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            while loop.time() < deadline:
                start = time.perf_counter()
                writer.write(request)
                answer = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(answer)
                if length is None:  # chunked or close-delimited: not what Triton sends
                    raise RuntimeError(f"answer without Content-Length: {answer[:200]!r}")
                await reader.readexactly(int(length.group(1)))
                latencies.append(time.perf_counter() - start)
                if answer[9:12] != b"200":
                    errors += 1
        finally:
            writer.close()

    began = loop.time()
    await asyncio.gather(*(connection() for _ in range(conns)))
    stats = latency_stats(latencies, loop.time() - began, errors)
    return {**stats, "requests": len(latencies)}


def run_driver(url: str, body: HttpBody, conns: int, seconds: float) -> dict[str, float]:
    """The asyncio driver against `url` (http://127.0.0.1:PORT/PATH)."""
    hostport, _, path = url.removeprefix("http://").partition("/")
    port = int(hostport.rsplit(":", 1)[1])
    return run_fast(lambda: _drive(port, "/" + path, body, conns, seconds))


def variant_shares(url: str, body: HttpBody, n: int = 200) -> dict[str, Any]:
    """How `n` sequential answers from `url` spread over lastmile-variant values."""
    counts: dict[str, int] = {}
    for _ in range(n):
        variant = check_answer(url, body)["variant"]
        counts[variant] = counts.get(variant, 0) + 1
    return dict(sorted(counts.items()))
