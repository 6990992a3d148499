"""The command line: a ``LightningCLI`` over ``RLModule`` and ``PromptDataModule``.

    python -m lightning_dsrl fit --config configs/ds_grpo.yaml [--config overlay.yaml] [--model.objective.gamma_p 0.05]
    python -m lightning_dsrl validate --config configs/ds_grpo.yaml [--ckpt_path runs/.../last.ckpt]

Sections of a config: ``model`` (RLModule: the policy and the objective), ``data``
(PromptDataModule: the task), ``rollout`` (RolloutCallback: engine, sampling, rewards),
``checkpoint`` (Lightning's ModelCheckpoint; both always added to the trainer's callbacks) and
``trainer``. Defaults set here: TensorBoard logs under ``runs/``, a metric point every step, no
sanity validation (it would generate), ``last.ckpt`` kept and a checkpoint every 50 steps.

Safety nets set here: parse errors become one ``ConfigError`` line (``cli_errors.py``);
checkpoints are written atomically and loaded with ``weights_only=True`` (``checkpoint_io.py``);
a run never writes into an existing, non-empty run directory (an explicit
``trainer.logger.init_args.version`` that exists, or an explicit ``checkpoint.dirpath`` holding
checkpoints) unless ``--overwrite_run_dir true`` is given.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_dsrl.checkpoint_io import SafeCheckpointIO
from lightning_dsrl.cli_errors import check_config_files, explain_parse_error
from lightning_dsrl.data.datamodule import PromptDataModule
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.module import RLModule
from lightning_dsrl.progress import StepProgressBar
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
# Checkpoints after the optimizer step are what a resume needs; Lightning's manual-optimisation advice
# (save the pre-step weights by hand) does not apply here.
warnings.filterwarnings("ignore", message=r".*Using ModelCheckpoint with manual optimization.*")


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
            parser_kwargs={"exit_on_error": False},  # errors come back as ArgumentError: see parse_arguments
            args=args,
            run=run,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        argv = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        check_config_files(argv)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            subcommand = next((a for a in argv if a in self.subcommands()), None)
            sub_parser = self._subcommand_parsers.get(subcommand, parser) if subcommand else parser
            raise ConfigError(explain_parse_error(str(err), sub_parser, subcommand)) from err

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--overwrite_run_dir", type=bool, default=False,
                            help="let this run write into an existing run directory (an explicit logger version "
                                 "or checkpoint.dirpath that already holds files); off by default so that no run "
                                 "overwrites another")
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
        if self.subcommand == "fit":
            config = self.config["fit"]
            config["ckpt_path"] = resolve_last(config)
            check_ckpt_path(config.get("ckpt_path"))

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={}) or {}
        plugins = config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs.setdefault("plugins", [*plugins, SafeCheckpointIO()])
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in callbacks) and _RICH_AVAILABLE:
            kwargs.setdefault("callbacks", [*callbacks, StepProgressBar()])
        overwrite = bool(self._get(self.config_init, "overwrite_run_dir", default=False))
        self.save_config_kwargs["overwrite"] = overwrite
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except ValueError as err:
            if "invalid strategy name" not in str(err):
                raise
            raise ConfigError(f"trainer.strategy={config.get('strategy')!r} is not a strategy Lightning knows; use one of "
                              f"{', '.join(sorted(StrategyRegistry))} (e.g. ddp, or fsdp2 / configs/fsdp.yaml), or a "
                              "class_path") from err
        if not overwrite and rank_zero_only.rank == 0:
            _refuse_existing_run_dirs(trainer)
        return trainer


def resolve_last(config) -> str | None:
    """``fit --ckpt_path last``: the newest ``last.ckpt`` of this config's earlier runs
    (``<save_dir>/<name>/version_*/checkpoints/``), so that a killed run resumes into a new version
    directory with its step count, optimizer, RNG and data position. Lightning's own lookup of
    ``last`` only searches the new run's empty directory; with an explicit ``checkpoint.dirpath``
    it is left to Lightning."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path != "last" or (config.get("checkpoint") or {}).get("dirpath"):
        return ckpt_path
    logger = (config.get("trainer") or {}).get("logger")
    init = getattr(logger, "init_args", None) or {}
    save_dir, name = init.get("save_dir") if init else None, init.get("name", "lightning_dsrl") if init else None
    if not save_dir:
        raise ConfigError("--ckpt_path last: cannot tell where earlier runs are without trainer.logger.init_args."
                          "save_dir; give the checkpoint file, e.g. --ckpt_path runs/<name>/version_0/checkpoints/last.ckpt")
    root = Path(save_dir) / (name or "")
    found = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"--ckpt_path last: no earlier run of this config left a checkpoint ({root}/version_*/"
                          "checkpoints/last.ckpt); leave --ckpt_path out to start, or give a checkpoint file")
    return str(found[-1])


def _refuse_existing_run_dirs(trainer) -> None:
    """``ConfigError`` if this run would write into a directory that already holds a run."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir and os.path.isdir(log_dir) and os.listdir(log_dir):
            raise ConfigError(
                f"trainer.logger.init_args.version={getattr(logger, 'version', None)!r}: the run directory {log_dir} "
                "already exists and is not empty; choose another version (or leave it unset for the next free "
                "one), move the old run away, or pass --overwrite_run_dir true to write into it")
    for callback in trainer.callbacks:
        dirpath = getattr(callback, "dirpath", None) if isinstance(callback, ModelCheckpoint) else None
        if dirpath and os.path.isdir(dirpath) and any(f.endswith(".ckpt") for f in os.listdir(dirpath)):
            raise ConfigError(
                f"checkpoint.dirpath={dirpath!r} already holds checkpoints; choose another directory, move them "
                "away, or pass --overwrite_run_dir true to write into it")
