"""The one exception type for mistakes a user can make (config, paths, names).

The CLI prints a ``ConfigError`` as a single ``error:`` line naming the option and a fix, with no
stack trace unless ``--debug`` is given or ``LIGHTNING_DSRL_DEBUG=1`` is set.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A setting that cannot work, with the option to change and how."""
