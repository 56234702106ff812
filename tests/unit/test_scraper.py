"""Parsing Triton's Prometheus text into raw sample rows (``lastmile metrics --model``)."""

from __future__ import annotations

from manager import store
from manager.observe.triton import parse_samples
from manager.services.metrics import raw_samples


def parse_metrics(text: str, *, server: str, ts: object) -> list[store.MetricSample]:
    return raw_samples(parse_samples(text), server=server, ts=ts)  # type: ignore[arg-type]


# Captured from the embedded tritonserver 2.51 (trimmed).
TRITON_TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="default.fraud.v1",version="1"} 12
nv_inference_request_success{model="default.scaler",version="1"} 12
# HELP nv_inference_request_failure Number of failed inference requests
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="default.scaler",reason="BACKEND",version="1"} 2
# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.0246
# HELP process_cpu_seconds_total not Triton's
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3
"""


def test_parse_keeps_triton_families_with_model_version_and_labels() -> None:
    ts = store.utcnow()
    rows = list(parse_metrics(TRITON_TEXT, server="http://t:8000", ts=ts))
    got = {(r.metric, r.model, r.version, tuple(r.labels.items()), r.value) for r in rows}
    assert got == {
        ("nv_inference_request_success", "default.fraud.v1", "1", (), 12.0),
        ("nv_inference_request_success", "default.scaler", "1", (), 12.0),
        ("nv_inference_request_failure", "default.scaler", "1", (("reason", "BACKEND"),), 2.0),
        ("nv_cpu_utilization", "", "", (), 0.0246),
    }
    assert all(r.ts == ts and r.server == "http://t:8000" for r in rows)


def test_parse_of_empty_text_gives_no_rows() -> None:
    assert list(parse_metrics("", server="s", ts=store.utcnow())) == []
