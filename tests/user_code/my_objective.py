"""A user's own objective, in the user's own folder (not in the package): GRPO with a length penalty.

    A_i' = A_i - length_coef * T_i / max_new_tokens

Run it from this folder (Python puts the working directory on the import path):

    python -m lightning_dsrl fit --config configs/ds_grpo.yaml \\
        --model.objective.class_path my_objective.MyObjective --model.objective.init_args.length_coef 0.1

or from anywhere with ``PYTHONPATH=path/to/this/folder``. ``tests/test_objective_cli.py`` runs exactly that.
"""

from __future__ import annotations

from torch import Tensor

from lightning_dsrl import GRPO, RolloutBatch
from lightning_dsrl.errors import ConfigError


class MyObjective(GRPO):
    """GRPO that prefers short completions: one hook (``advantages``) overridden, everything else is GRPO.

    Args:
        length_coef: penalty per completion, in units of the generation budget (>= 0).
        **kwargs: the GRPO options (``beta``, ``epsilon_low``, ...).
    """

    def __init__(self, length_coef: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if length_coef < 0:
            raise ConfigError(f"model.objective.length_coef={length_coef}: must be >= 0")
        self.length_coef = float(length_coef)

    def advantages(self, batch: RolloutBatch) -> Tensor:
        base = super().advantages(batch)  # [n] the GRPO group advantages
        length = batch.completion_mask.sum(-1).float() / max(batch.max_new_tokens, 1)  # [n] in [0, 1]
        penalty = self.length_coef * length
        self.metric("my/length_penalty", penalty.mean())  # logged as train/my/length_penalty
        return base - penalty
