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
from pathlib import Path

from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_dsrl.data.datamodule import PromptDataModule
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.module import RLModule
from lightning_dsrl.rollout.callback import RolloutCallback

__all__ = ["DSRLCLI", "check_ckpt_path"]

_SPECIAL_CKPT = ("best", "last", "hpc")  # resolved by Lightning itself


def check_ckpt_path(ckpt_path: str | None) -> None:
    """Fail early, in one line, when ``--ckpt_path`` names a file that is not there."""
    if not ckpt_path or str(ckpt_path) in _SPECIAL_CKPT or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path)
    if path.is_file():
        return
    found = sorted(path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
    hint = f"; checkpoints in {path.parent}: {', '.join(p.name for p in found[:5])}" if found else (
        "; a run keeps its checkpoints in runs/<name>/version_<n>/checkpoints/ (last.ckpt), "
        "or leave --ckpt_path out to evaluate the base model")
    what = "a directory, not a checkpoint file" if path.is_dir() else "no such file"
    raise ConfigError(f"--ckpt_path {ckpt_path}: {what}{hint}")

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

    def before_instantiate_classes(self) -> None:
        if self.subcommand in ("validate", "test"):  # before the model loads, not after
            check_ckpt_path(self.config[self.subcommand].get("ckpt_path"))
