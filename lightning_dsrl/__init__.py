"""lightning_dsrl: diversity-preserving RL fine-tuning of LLMs on verifiable rewards.

Importing the package registers the built-in objectives, rewards, tasks and engines, so YAML
configs can name them by class name alone (``class_path: DSGRPO``).
"""

from lightning_dsrl.data import AdditionTask, CountdownTask, MathTask, PromptDataModule, Task
from lightning_dsrl.module import RLModule
from lightning_dsrl.objectives import DSGRPO, GRPO, EntropyGRPO, Objective, PassAtKTraining, R1ZeroDiv
from lightning_dsrl.rewards import (
    CountdownReward,
    FormatReward,
    MathReward,
    NumericAnswerReward,
    Reward,
    RewardModule,
)
from lightning_dsrl.rollout import HFEngine, RolloutCallback, RolloutEngine
from lightning_dsrl.types import (
    LossOutput,
    PromptBatch,
    PromptRecord,
    RewardResult,
    Rollout,
    RolloutBatch,
    TrainBatch,
)

__version__ = "0.1.0"

__all__ = [
    "AdditionTask",
    "CountdownReward",
    "CountdownTask",
    "DSGRPO",
    "EntropyGRPO",
    "FormatReward",
    "GRPO",
    "HFEngine",
    "LossOutput",
    "MathReward",
    "MathTask",
    "NumericAnswerReward",
    "Objective",
    "PassAtKTraining",
    "PromptBatch",
    "PromptDataModule",
    "PromptRecord",
    "R1ZeroDiv",
    "RLModule",
    "Reward",
    "RewardModule",
    "RewardResult",
    "Rollout",
    "RolloutBatch",
    "RolloutCallback",
    "RolloutEngine",
    "Task",
    "TrainBatch",
]
