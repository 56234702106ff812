"""Metrics as the figures people read, computed without I/O.

Triton and the gateway expose cumulative counters (requests since start, microseconds spent
since start) and histograms; a person wants requests per second, failures per second by
reason, average times per request and latency percentiles over an interval. The modules here
turn two readings of the same source into those per-interval figures, survive counter resets
(a model reload, a process restart), downsample old figures, parse durations like ``15m`` and
render a Prometheus configuration. No SQL, no HTTP: ``manager.services.metrics`` reads the
sources, names the figures after workspaces and pipelines, and stores them.

This package (not ``manager/assays``, which holds the data-drift numerics) is where the
metrics numerics live:

    figures.py            the vocabulary: figure names, the Figure record, label keys
    triton.py             Triton's /metrics text -> series -> per-interval figures
    gateway.py            the gateway's per-variant counters -> requests/s, errors/s, p50/95/99
    downsample.py         old per-interval figures -> 5-minute / hourly averages
    durations.py          "30s" / "15m" / "2h" / "7d" -> seconds
    prometheus_config.py  a Prometheus scrape configuration for this system's servers
"""
