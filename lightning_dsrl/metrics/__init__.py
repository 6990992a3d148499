"""Metrics of correctness and diversity (pass@k and friends)."""

from lightning_dsrl.metrics.functional import distinct_correct, group_counts, zero_signal_fraction
from lightning_dsrl.metrics.passk import PassAtK, powers_of_two

__all__ = ["PassAtK", "distinct_correct", "group_counts", "powers_of_two", "zero_signal_fraction"]
