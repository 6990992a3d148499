"""The exception types a user meets: a setting that cannot work, and a run that cannot go on.

The CLI prints either as a single ``error:`` line naming the option and a fix, with no stack
trace unless ``--debug`` is given or ``LIGHTNING_DSRL_DEBUG=1`` is set.
"""

from __future__ import annotations

__all__ = ["ConfigError", "TrainingError"]


class ConfigError(ValueError):
    """A setting that cannot work, with the option to change and how."""


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. non-finite losses step after step), with the setting to change."""
