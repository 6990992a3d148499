"""lightning_dsrl: diversity-preserving RL fine-tuning of LLMs on verifiable rewards.

Importing the package registers the built-in objectives, rewards, tasks and engines, so YAML
configs can name them by class name alone (``class_path: DSGRPO``).
"""

from lightning_dsrl.data import AdditionTask, CountdownTask, MathTask, PromptDataModule, Task
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO, GRPO, Objective
from lightning_dsrl.rewards import (
    CountdownReward,
    FormatReward,
    MathReward,
    NumericAnswerReward,
    RewardModule,
)
from lightning_dsrl.rollout import HFEngine, RolloutCallback, RolloutEngine
from lightning_dsrl.types import LossOutput, PromptBatch, PromptRecord, RewardResult, RolloutBatch

__version__ = "0.1.0"

__all__ = [
    "AdditionTask",
    "CountdownReward",
    "CountdownTask",
    "DSGRPO",
    "FormatReward",
    "GRPO",
    "HFEngine",
    "LossOutput",
    "MathReward",
    "MathTask",
    "NumericAnswerReward",
    "Objective",
    "PromptBatch",
    "PromptDataModule",
    "PromptRecord",
    "RLModule",
    "RewardModule",
    "RewardResult",
    "RolloutBatch",
    "RolloutCallback",
    "RolloutEngine",
    "Task",
]
