"""``SafeCheckpointIO``: checkpoints written atomically and read without unpickling code.

The CLI sets it as the trainer's checkpoint plugin unless the config names another one.

- Save: ``torch.save`` into a temporary file in the checkpoint's own directory, flush and
  ``fsync`` it, then ``os.replace`` it over the target and ``fsync`` the directory. A crash at
  any point leaves either the previous file or the new one, never half a file. (Lightning's
  default goes through a temporary file in the system temp directory and ``shutil.move``, which
  is a plain copy when that directory is on another file system.) Remote URLs (``s3://``, ...)
  are left to Lightning's own writer.
- Load: ``torch.load(weights_only=True)``, whatever ``--weights_only`` says: a checkpoint of this
  framework holds tensors and plain values only, and unpickling arbitrary objects from a file
  would run whatever code its author put there. ``FSDP2Strategy``, which loads without a
  ``CheckpointIO``, reads through :func:`tensors_only` as well.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_dsrl.errors import ConfigError

__all__ = ["SafeCheckpointIO", "atomic_torch_save", "refuse_weights_only_false", "tensors_only"]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def refuse_weights_only_false(weights_only: bool | None) -> None:
    if weights_only is False:
        raise ConfigError("weights_only=false: lightning_dsrl loads checkpoints with weights_only=True only, "
                          "since unpickling arbitrary objects runs code from the file; drop --weights_only "
                          "(its checkpoints hold tensors and plain values)")


@contextmanager
def tensors_only(path: _PATH) -> Iterator[None]:
    """Around a ``weights_only=True`` load of ``path``: a file holding pickled objects becomes one
    ``ConfigError`` naming what it references."""
    try:
        yield
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(err))
        what = f" (it references {found.group(1)})" if found else ""
        raise ConfigError(f"ckpt_path={str(path)!r}: the file holds pickled Python objects besides tensors{what}, "
                          "which lightning_dsrl does not load because unpickling can run code from the file; use "
                          "a checkpoint written by lightning_dsrl") from err


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic local saves and ``weights_only=True`` loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO.save_checkpoint does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        refuse_weights_only_false(weights_only)
        with tensors_only(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
