"""Response bodies of the metrics routes (``GET .../pipelines/{pipeline}/metrics``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class FigureStats(BaseModel):
    """One figure over the period (manager.observe.figures names them)."""

    latest: float | None = Field(description="Value of the newest interval")
    latest_ts: datetime = Field(description="End of the newest interval")
    mean: float = Field(description="Mean over the period, weighted by interval length")
    min: float
    max: float
    total: float | None = Field(
        description="Rates only (*_per_s): value x interval summed, a count (e.g. requests)"
    )
    points: int = Field(description="Intervals measured")


Figures = dict[str, FigureStats]


class VariantMetrics(BaseModel):
    variant: str = Field(description="<pipeline>/<version>, as the gateway names it")
    version: int
    gateway: Figures = Field(description="What clients saw: gateway_requests_per_s, ...")
    triton: Figures = Field(description="The version's ensemble on Triton: requests_per_s, ...")
    steps: dict[str, Figures] = Field(
        description="The version's private step copies (blue/green), by step model"
    )


class PipelineMetrics(BaseModel):
    workspace: str
    pipeline: str
    source: Literal["direct", "prometheus"]
    since: str
    start: datetime
    end: datetime
    variants: list[VariantMetrics]
    steps: dict[str, Figures] = Field(
        description="Step models shared by the pipeline's versions, as 'model:version'"
    )
    servers: dict[str, Figures] = Field(
        description="Server-wide figures (CPU, GPU where present) of the Triton servers that "
        "served the pipeline"
    )


class ScrapeResult(BaseModel):
    samples: int = Field(description="Raw Triton samples stored")
    points: int = Field(description="Figures stored")
