"""Baselines that PRACTISE is benchmarked against (they share its latency and recovery code).

``filter_pruning``: Li et al. 2017-style filter pruning of each residual block's inner channels
with Torch-Pruning (L1 or Taylor importance), and a search for the pruning ratio that matches a
measured latency cut.
"""

from dfpractise.baselines.filter_pruning import (
    IMPORTANCES,
    inner_convs,
    inner_widths,
    latency_measure,
    match_latency,
    prune_filters,
    pseudo_label_loss,
)

__all__ = [
    "IMPORTANCES",
    "inner_convs",
    "inner_widths",
    "latency_measure",
    "match_latency",
    "prune_filters",
    "pseudo_label_loss",
]
