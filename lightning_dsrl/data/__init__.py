"""Tasks (where prompts come from) and the ``PromptDataModule``."""

from lightning_dsrl.data.arithmetic import AdditionTask
from lightning_dsrl.data.base import Task
from lightning_dsrl.data.countdown import CountdownTask
from lightning_dsrl.data.datamodule import PromptDataModule
from lightning_dsrl.data.math import MathTask

__all__ = ["AdditionTask", "CountdownTask", "MathTask", "PromptDataModule", "Task"]
