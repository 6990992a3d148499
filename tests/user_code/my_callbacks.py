"""A callback a user might add with ``--trainer.callbacks+=my_callbacks.SaveWeights``: each process writes
the full policy weights it ends the run with (the multi-node tests compare them across nodes)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback


class SaveWeights(Callback):
    """At the end of ``fit``, every process writes ``<directory>/rank<global rank>.pt``."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_fit_end(self, trainer, pl_module) -> None:
        from lightning_dsrl import sharding

        weights = {name: t.detach().cpu().clone() for name, t in sharding.full_weights(pl_module.policy)}
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(weights, self.directory / f"rank{trainer.global_rank}.pt")
