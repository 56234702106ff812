"""Pure numerics of drift assays (numpy only, no I/O): summaries, bins, metrics, windows.

The services layer keeps ``Summary`` objects (as JSON) per element and time window, merges
them over an assay window, bins baseline and window with the same edges and scores them.
"""

from manager.assays.binning import (
    Binning,
    bin_counts_values,
    bin_index,
    check_edges,
    make_edges,
    n_bins,
)
from manager.assays.drift import EPS, METRICS, js, ks, max_diff, proportions, psi, score, sum_diff
from manager.assays.sketch import ALPHA, MAX_EXACT, Summary, merge_all, summarise
from manager.assays.windows import Status, Thresholds, status, windows

__all__ = [
    "ALPHA",
    "EPS",
    "MAX_EXACT",
    "METRICS",
    "Binning",
    "Status",
    "Summary",
    "Thresholds",
    "bin_counts_values",
    "bin_index",
    "check_edges",
    "js",
    "ks",
    "make_edges",
    "max_diff",
    "merge_all",
    "n_bins",
    "proportions",
    "psi",
    "score",
    "status",
    "sum_diff",
    "summarise",
    "windows",
]
