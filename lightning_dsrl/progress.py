"""The progress bar of ``python -m lightning_dsrl``: Lightning's rich bar, labelled by optimizer step.

An RL run is sized in steps (``trainer.max_steps``), and Lightning then sets ``max_epochs`` to -1,
which its bar printed as ``Epoch 7/-2``. This bar reads ``Step 112/128 · epoch 7`` instead.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training description counts optimizer steps against ``max_steps``."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps is None or trainer.max_steps < 0:
            return super()._get_train_description(current_epoch)
        description = f"Step {trainer.global_step}/{trainer.max_steps} · epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"
