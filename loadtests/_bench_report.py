"""Figures of the gateway benchmark: medians per target, paired ratios with their spread, targets.

Every round measures all targets of a cell one after the other, so a ratio is taken within a
round (gateway ÷ direct of the same round) and the report gives the median of those per-round
ratios with their [min-max]: noise from other work on the machine then shows as spread instead
of silently moving one side.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Round = dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One comparison: the same load (protocol, body, clients) against each target in turn."""

    kind: str  # http-json, http-binary, grpc, rollout
    clients: int
    targets: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.kind}@{self.clients}"


# (numerator, denominator) pairs reported per kind of cell
PAIRS = {
    "proxy": (("gateway", "direct"), ("nginx", "direct"), ("gateway", "nginx")),
    "rollout": (
        ("canary", "passthrough"),
        ("shadow", "passthrough"),
        ("capture1", "passthrough"),
        ("capture100", "passthrough"),
    ),
}


def spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": [round(v, 4) for v in values],
    }


def _median(runs: list[Round], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(cells: Sequence[Cell], samples: dict[tuple[str, str], list[Round]]) -> dict:
    """Rows (medians per cell and target) and paired ratios per cell."""
    rows: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, Any]] = {}
    for cell in cells:
        present = [t for t in cell.targets if samples.get((cell.key, t))]
        for target in present:
            runs = samples[(cell.key, target)]
            rows.append(
                {
                    "cell": cell.key,
                    "kind": cell.kind,
                    "clients": cell.clients,
                    "target": target,
                    "rps": _median(runs, "rps"),
                    "p50_ms": _median(runs, "p50_ms"),
                    "p99_ms": _median(runs, "p99_ms"),
                    "errors": int(sum(r["errors"] for r in runs)),
                    "proxy_cpu_us": _median(runs, "proxy_cpu_us"),
                    "triton_cpu_us": _median(runs, "triton_cpu_us"),
                    "rps_rounds": [round(r["rps"]) for r in runs],
                }
            )
        pairs = PAIRS["rollout" if cell.kind == "rollout" else "proxy"]
        out: dict[str, Any] = {}
        for num, den in pairs:
            if num not in present or den not in present:
                continue
            a, b = samples[(cell.key, num)], samples[(cell.key, den)]
            out[f"{num}/{den}"] = {
                "throughput": spread([x["rps"] / y["rps"] for x, y in zip(a, b, strict=True)]),
                "added_p50_ms": spread(
                    [x["p50_ms"] - y["p50_ms"] for x, y in zip(a, b, strict=True)]
                ),
                "added_p99_ms": spread(
                    [x["p99_ms"] - y["p99_ms"] for x, y in zip(a, b, strict=True)]
                ),
            }
        ratios[cell.key] = out
    return {"rows": rows, "ratios": ratios}


def _get(ratios: dict, cell: str, pair: str, what: str = "throughput") -> dict | None:
    return ratios.get(cell, {}).get(pair, {}).get(what)


def targets(ratios: dict) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, spread and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(label: str, cell: str, pair: str, op: str, bound: float, what: str = "throughput"):
        value = _get(ratios, cell, pair, what)
        if value is None:
            out.append({"target": label, "met": None, "value": None, "why": "not measured"})
            return
        met = value["median"] >= bound if op == ">=" else value["median"] <= bound
        out.append({"target": label, "bound": f"{op} {bound}", "met": met, "value": value})

    for body in ("json", "binary"):
        add(f"HTTP {body} gateway ÷ nginx @16", f"http-{body}@16", "gateway/nginx", ">=", 0.95)
    for body in ("json", "binary"):
        add(f"HTTP {body} gateway ÷ direct @16", f"http-{body}@16", "gateway/direct", ">=", 0.85)
    add("HTTP json added p50 (ms) @1", "http-json@1", "gateway/direct", "<=", 0.15, "added_p50_ms")
    # gRPC: >= 0.7 x direct, or within 10 % of nginx's grpc_pass, whichever bound is lower
    direct = _get(ratios, "grpc@16", "gateway/direct")
    vs_nginx = _get(ratios, "grpc@16", "gateway/nginx")
    nginx = _get(ratios, "grpc@16", "nginx/direct")
    if direct is None:
        out.append({"target": "gRPC gateway ÷ direct @16", "met": None, "why": "not measured"})
    else:
        bound = 0.7 if nginx is None else min(0.7, 0.9 * nginx["median"])
        met = direct["median"] >= bound
        out.append(
            {
                "target": "gRPC gateway ÷ direct @16",
                "bound": f">= {bound:.2f} (min of 0.7 and 0.9 x nginx ÷ direct)",
                "met": met,
                "value": direct,
                "gateway/nginx": vs_nginx,
            }
        )
    add("canary 90/10 ÷ pass-through @16", "rollout@16", "canary/passthrough", ">=", 0.9)
    add("shadow 100 % ÷ pass-through @16", "rollout@16", "shadow/passthrough", ">=", 0.9)
    add("capture 100 % ÷ pass-through @16", "rollout@16", "capture100/passthrough", ">=", 0.9)
    return out


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _spread_text(value: dict[str, Any], fmt: str = ".2f") -> str:
    low, high = format(value["min"], fmt), format(value["max"], fmt)
    return f"{format(value['median'], fmt)} [{low}–{high}]"


def render(result: dict[str, Any]) -> str:
    lines = [
        f"gateway benchmark: {result['header']}",
        f"{'cell':<15} {'target':<12} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>5} "
        f"{'proxy µs/req':>12} {'triton µs/req':>13}  req/s per round",
    ]
    last = None
    for r in result["rows"]:
        cell = r["cell"] if r["cell"] != last else ""
        last = r["cell"]
        lines.append(
            f"{cell:<15} {r['target']:<12} {r['rps']:>7.0f} {r['p50_ms']:>7.2f} "
            f"{r['p99_ms']:>7.2f} {r['errors']:>5} {_num(r['proxy_cpu_us'], '.0f'):>12} "
            f"{_num(r['triton_cpu_us'], '.0f'):>13}  {r['rps_rounds']}"
        )
    lines.append("ratios per cell: median of the per-round ratios [min–max]; added ms vs the den.")
    for cell, pairs in result["ratios"].items():
        for i, (pair, value) in enumerate(pairs.items()):
            lines.append(
                f"{cell if i == 0 else '':<15} {pair:<20} throughput "
                f"{_spread_text(value['throughput'])}   added p50 "
                f"{_spread_text(value['added_p50_ms'], '+.3f')} ms   p99 "
                f"{_spread_text(value['added_p99_ms'], '+.2f')} ms"
            )
    lines.append("targets (median [min–max] over rounds):")
    for t in result["targets"]:
        verdict = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t["met"]]
        if t.get("value") is None:
            lines.append(f"  {verdict} {t['target']}: {t.get('why', '')}")
            continue
        fmt = "+.3f" if "ms" in t["target"] else ".2f"
        extra = ""
        if t.get("gateway/nginx"):
            extra = f"; gateway ÷ nginx {_spread_text(t['gateway/nginx'])}"
        lines.append(
            f"  {verdict} {t['target']:<34} {_spread_text(t['value'], fmt)}  "
            f"(target {t['bound']}{extra})"
        )
    lines += result.get("notes", [])
    return "\n".join(lines)
