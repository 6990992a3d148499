"""The command line: a ``LightningCLI`` over ``RLModule`` and ``PromptDataModule``.

    python -m lightning_dsrl fit --config configs/ds_grpo.yaml [--config overlay.yaml] [--model.objective.gamma_p 0.05]
    python -m lightning_dsrl validate --config configs/ds_grpo.yaml [--ckpt_path runs/.../last.ckpt]

Sections of a config: ``model`` (RLModule: the policy and the objective), ``data``
(PromptDataModule: the task), ``rollout`` (RolloutCallback: engine, sampling, rewards),
``checkpoint`` (Lightning's ModelCheckpoint; both always added to the trainer's callbacks) and
``trainer``. Defaults set here: TensorBoard logs under ``runs/``, a metric point every step, no
sanity validation (it would generate), ``last.ckpt`` kept and a checkpoint every 50 steps.
"""

from __future__ import annotations

import logging
import warnings

from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_dsrl.data.datamodule import PromptDataModule
from lightning_dsrl.module import RLModule
from lightning_dsrl.rollout.callback import RolloutCallback

__all__ = ["DSRLCLI"]

# The frozen reference model is in eval mode on purpose (no dropout); Lightning warns about it.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


class _NoAdverts(logging.Filter):
    """Drop Lightning's "Tip: try installing <cloud product>" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


class DSRLCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(
            RLModule,
            PromptDataModule,
            save_config_kwargs={"overwrite": False},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(RolloutCallback, "rollout")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "trainer.logger": lazy_instance(TensorBoardLogger, save_dir="runs", name="lightning_dsrl"),
                "trainer.log_every_n_steps": 1,
                "trainer.num_sanity_val_steps": 0,
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 50,
            }
        )
