"""``python -m lightning_dsrl {fit,validate,test} --config ...``

Mistakes a user can make (a bad option value, a missing file, an unknown name) end with one
``error:`` line and exit status 2; a run that has to stop (non-finite losses step after step)
with one ``error:`` line and status 1. ``--debug`` (or ``LIGHTNING_DSRL_DEBUG=1``) shows the
full stack trace instead.
"""

from __future__ import annotations

import os
import sys

from lightning_dsrl.cli import DSRLCLI
from lightning_dsrl.errors import ConfigError, TrainingError


def cli_main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("LIGHTNING_DSRL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if args is None:  # LightningCLI reads sys.argv itself; giving it both draws a warning
        sys.argv[1:] = argv
    try:
        DSRLCLI(args=None if args is None else argv)
    except Exception as err:
        cause = _our_error(err)
        if cause is None or debug:
            raise
        print(f"error: {cause}", file=sys.stderr)
        # 2: the command cannot run as configured; 1: it ran and had to stop
        raise SystemExit(2 if isinstance(cause, ConfigError) else 1) from None


def _our_error(err: BaseException | None, depth: int = 0) -> ConfigError | TrainingError | None:
    """The ConfigError (or TrainingError) behind ``err``, also when jsonargparse or Lightning wrapped it."""
    if err is None or depth > 10:
        return None
    if isinstance(err, (ConfigError, TrainingError)):
        return err
    return _our_error(err.__cause__, depth + 1) or _our_error(err.__context__, depth + 1)


if __name__ == "__main__":
    cli_main()
