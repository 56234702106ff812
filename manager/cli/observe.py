"""``lastmile metrics`` and ``lastmile prometheus-config``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.table import Table

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, err, settings, table
from manager.errors import InvalidInput
from manager.names import check_name
from manager.observe.durations import parse_duration
from manager.observe.prometheus_config import Target, render

SOURCES = ("direct", "prometheus")


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _figure_rows(section: str, figures: dict[str, Any]) -> list[list[str]]:
    return [
        [section, key, _num(f["latest"]), _num(f["mean"]), _num(f["max"]), _count(f["total"])]
        for key, f in figures.items()
    ]


def _figures_table(title: str, sections: list[tuple[str, dict[str, Any]]]) -> Table:
    rows = [row for section, figures in sections for row in _figure_rows(section, figures)]
    return table(title, ["", "figure", "latest", "mean", "max", "total"], rows)


def _human(info: dict[str, Any]) -> Any:
    period = f"last {info['since']}, {info['source']}"
    if not info["variants"] and not info["steps"]:
        return (
            f"no figures for {info['pipeline']} in the {period}: is it deployed and getting "
            "traffic? (the scraper stores them every LASTMILE_SCRAPE_INTERVAL_S)"
        )
    parts: list[Any] = []
    for v in info["variants"]:
        sections = [("gateway", v["gateway"]), ("triton", v["triton"])]
        sections += [(f"step {step}", figures) for step, figures in v["steps"].items()]
        parts.append(_figures_table(f"{v['variant']} ({period})", sections))
    if info["steps"]:
        parts.append(
            _figures_table(
                f"steps of {info['pipeline']} (shared by its versions)",
                [(step, figures) for step, figures in info["steps"].items()],
            )
        )
    if info["servers"]:
        parts.append(_figures_table("Triton servers", list(info["servers"].items())))
    return Group(*parts)


def metrics(
    pipeline: str | None = typer.Argument(
        None, help="Pipeline, by its own name. Without it: the latest raw Triton samples."
    ),
    variant: str | None = typer.Option(None, "--variant", help="One version: 2, v2 or P/2."),
    since: str = typer.Option("15m", "--since", help="The period: 30s, 15m, 2h, 7d."),
    source: str = typer.Option(
        "direct",
        "--source",
        help="direct (Lastmile's own scrapes) or prometheus (read from LASTMILE_PROMETHEUS_URL).",
    ),
    model: str | None = typer.Option(
        None, "--model", help="Raw samples: only this registered model (without PIPELINE)."
    ),
    scrape: bool = typer.Option(False, "--scrape", help="Scrape now first (owner only)."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write a chart of --figure per variant: FILE.svg or FILE.png."
    ),
    figure: str = typer.Option(
        "p99", "--figure", help="What --plot draws: p50, p95, p99, requests or errors."
    ),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A pipeline's figures per variant: requests/s, failures/s by reason, latency p50/p95/p99,
    average request/queue/compute time, batch size, cache hits: the latest and over --since."""
    if pipeline is None:
        if variant is not None:
            raise InvalidInput(
                "--variant needs a PIPELINE", hint="lastmile metrics PIPELINE --variant 2"
            )
        _raw(model, scrape, workspace, as_json)
        return
    check_name(pipeline, kind="pipeline")
    if model is not None:
        raise InvalidInput(
            "give a PIPELINE or --model, not both",
            hint=f"lastmile metrics {pipeline} shows its steps too",
        )
    parse_duration(since)
    fmt = plot.suffix.lower().lstrip(".") if plot is not None else "svg"
    if fmt not in ("svg", "png"):
        raise InvalidInput(f"--plot {plot}: the file must end in .svg or .png")
    if source not in SOURCES:
        raise InvalidInput(f"--source {source!r} is unknown", hint="use direct or prometheus")
    with client(workspace) as lm:
        if scrape:
            lm.scrape()
        info = lm.pipeline_metrics(pipeline, since=since, variant=variant, source=source)  # type: ignore[arg-type]
        chart = None
        if plot is not None:
            chart = lm.metrics_chart(pipeline, figure=figure, since=since, source=source, fmt=fmt)
    emit(info, as_json, _human(info))
    if plot is not None and chart is not None:
        plot.write_bytes(chart)
        err.print(f"chart written to {plot}")


def _raw(model: str | None, scrape: bool, workspace: str | None, as_json: bool) -> None:
    with client(workspace) as lm:
        rows = lm.metrics(model=model, scrape=scrape)
    if not rows and model and not as_json:
        emit(
            rows,
            False,
            f"no raw Triton samples of model {model!r}; for a pipeline's figures: "
            f"lastmile metrics {model}",
        )
        return
    title = f"Raw Triton samples ({rows[0]['ts'] if rows else 'none scraped yet'})"
    body = [[r["model"], r["version"], r["metric"], f"{r['value']:g}"] for r in rows if r["model"]]
    emit(rows, as_json, table(title, ["Triton model", "version", "metric", "value"], body))


def scrape_targets() -> tuple[list[Target], str]:
    """This system's Triton servers and gateway: from the running system's state file, else
    from the settings (what `lastmile up` would start)."""
    from manager.state_file import read_state
    from manager.system import make_runtime

    s = settings()
    state = read_state(s)
    if state is not None:
        targets = [
            Target("triton", t["http"], f"{t['metrics']}/metrics", t.get("replica"))
            for t in state.get("triton", [])
        ]
        gateway = state["gateway"]["metrics"]
        origin = f"the system running for LASTMILE_HOME={s.home}"
    else:
        targets = [
            Target("triton", r.endpoints.http_url, f"{r.endpoints.metrics_url}/metrics", i)
            for i, r in enumerate(make_runtime(s).replicas)
        ]
        gateway = f"http://{s.gateway_host}:{s.gateway_metrics_port}/metrics"
        origin = f"the settings (nothing runs for LASTMILE_HOME={s.home})"
    return [*targets, Target("gateway", gateway, gateway)], origin


def prometheus_config(
    out_file: Path | None = typer.Option(
        None, "--out", help="Write the configuration to this file (default: print it)."
    ),
    as_json: JsonOpt = False,
) -> None:
    """A Prometheus configuration that scrapes this system's Triton servers and gateway (run
    `prometheus --config.file FILE`; set LASTMILE_PROMETHEUS_URL to read figures back)."""
    targets, origin = scrape_targets()
    text = render(targets, scrape_interval_s=settings().scrape_interval_s, origin=origin)
    if out_file is not None:
        try:
            out_file.write_text(text)
        except OSError as exc:
            raise InvalidInput(
                f"cannot write {out_file}: {exc.strerror}",
                hint="give --out a file in a folder that exists and you can write",
            ) from exc
    data = {
        "config": text,
        "written": str(out_file) if out_file else None,
        "targets": [t.__dict__ for t in targets],
    }
    emit(data, as_json, f"wrote {out_file} ({len(targets)} targets)" if out_file else text)
