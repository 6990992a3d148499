"""``python -m lightning_dsrl {fit,validate,test} --config ...``

Mistakes a user can make (a bad option value, a missing file, an unknown name) end with one
``error:`` line; ``--debug`` (or ``LIGHTNING_DSRL_DEBUG=1``) shows the full stack trace instead.
"""

from __future__ import annotations

import os
import sys

from lightning_dsrl.errors import ConfigError


def cli_main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get("LIGHTNING_DSRL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    from lightning_dsrl.cli import DSRLCLI

    if args is None:  # LightningCLI reads sys.argv itself; giving it both draws a warning
        sys.argv[1:] = argv
    try:
        DSRLCLI(args=None if args is None else argv)
    except Exception as err:
        cause = _config_error(err)
        if cause is None or debug:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def _config_error(err: BaseException | None, depth: int = 0) -> ConfigError | None:
    """The ConfigError behind ``err``, also when jsonargparse or Lightning wrapped it."""
    if err is None or depth > 10:
        return None
    if isinstance(err, ConfigError):
        return err
    return _config_error(err.__cause__, depth + 1) or _config_error(err.__context__, depth + 1)


if __name__ == "__main__":
    cli_main()
