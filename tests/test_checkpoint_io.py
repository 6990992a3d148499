"""Safe loading and saving: checkpoints are written atomically and read with ``weights_only=True``;
models are never loaded with remote code unless asked."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from lightning_dsrl import checkpoint_io
from lightning_dsrl.checkpoint_io import SafeCheckpointIO, atomic_torch_save
from lightning_dsrl.cli import DSRLCLI
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.module import RLModule

ROOT = Path(__file__).resolve().parents[1]


class MakesADirectory:
    """Unpickling this runs ``os.makedirs(path)``: the kind of payload a hostile checkpoint carries."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    payload = tmp_path / "payload"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "x": MakesADirectory(str(payload))}, path)
    with pytest.raises(ConfigError, match=r"holds pickled Python objects besides tensors \(it references \w+.makedirs\)") as info:
        SafeCheckpointIO().load_checkpoint(path)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not payload.exists()
    torch.load(path, weights_only=False)  # what a plain unpickling would have done
    assert payload.is_dir()


def test_asking_for_weights_only_false_is_refused(tmp_path):
    path = tmp_path / "plain.ckpt"
    atomic_torch_save({"w": torch.ones(2)}, path)
    assert torch.equal(SafeCheckpointIO().load_checkpoint(path)["w"], torch.ones(2))
    with pytest.raises(ConfigError, match="weights_only=false"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)
    real_save = torch.save

    def crash_half_way(obj, handle):
        real_save(obj, handle)
        handle.truncate(10)  # a partial file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        SafeCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.setattr(checkpoint_io.torch, "save", real_save)
    assert int(SafeCheckpointIO().load_checkpoint(path)["step"]) == 1  # the old checkpoint, whole
    assert os.listdir(path.parent) == ["last.ckpt"]  # and no temporary file left


def test_the_cli_installs_the_safe_checkpoint_io(tmp_path):
    cli = DSRLCLI(args=["--config", str(ROOT / "configs" / "ds_grpo.yaml"),
                        "--trainer.logger.init_args.save_dir", str(tmp_path)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_remote_code_is_off_by_default(tiny_model_dir, monkeypatch):
    seen = []
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code", False))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    assert seen and not any(seen)


@pytest.fixture
def lightning_fsdp2_loads(monkeypatch) -> list:
    """``ModelParallelStrategy.load_checkpoint`` replaced by what it does with a checkpoint file:
    ``torch.load`` with the ``weights_only`` it is given, then writing the weights into the shards
    (here: recording the call)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    calls = []

    def load(self, path, weights_only=None):
        calls.append(path)
        return torch.load(path, map_location="cpu", weights_only=weights_only)

    monkeypatch.setattr(ModelParallelStrategy, "load_checkpoint", load)
    return calls


def test_fsdp2_loads_without_unpickling_code(tmp_path, lightning_fsdp2_loads):
    from lightning_dsrl.sharding import FSDP2Strategy

    payload = tmp_path / "payload"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "x": MakesADirectory(str(payload))}, path)
    with pytest.raises(ConfigError, match="weights_only=false"):
        FSDP2Strategy().load_checkpoint(path, weights_only=False)
    with pytest.raises(ConfigError, match=r"holds pickled Python objects besides tensors \(it references \w+.makedirs"):
        FSDP2Strategy().load_checkpoint(path)
    assert not payload.exists() and lightning_fsdp2_loads == []


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # the sharded checkpoint written in one process
def test_fsdp2_refuses_another_model_shape_before_loading(tmp_path, tiny_model_dir, lightning_fsdp2_loads):
    """Lightning's FSDP2 loader writes the weights into the shards before ``on_load_checkpoint`` runs: the
    shapes are checked first, for a checkpoint file and for a sharded checkpoint directory."""
    import torch.distributed.checkpoint as dcp

    from lightning_dsrl.sharding import FSDP2Strategy

    module = RLModule(name_or_path=tiny_model_dir)
    module.configure_model()
    strategy = FSDP2Strategy()
    strategy._lightning_module = module
    state = {k: v.clone() for k, v in module.state_dict().items()}
    own = tmp_path / "own.ckpt"
    torch.save({"state_dict": state}, own)
    strategy.load_checkpoint(own)
    assert lightning_fsdp2_loads == [own]
    vocab = state["policy.model.embed_tokens.weight"].shape[0]
    state["policy.model.embed_tokens.weight"] = torch.zeros(vocab, 48)  # a model with hidden size 48
    wider = tmp_path / "wider.ckpt"
    torch.save({"state_dict": state}, wider)
    sharded = tmp_path / "wider-sharded"  # FSDP2Strategy(save_distributed_checkpoint=True)'s layout
    dcp.save({"state_dict": state}, checkpoint_id=sharded)
    torch.save({"global_step": 1}, sharded / "meta.pt")
    for path in (wider, sharded):
        with pytest.raises(ConfigError, match=rf"embed_tokens.weight has shape \[{vocab}, 48\] but the model built "
                                              rf"from .* has \[{vocab}, 32\]"):
            strategy.load_checkpoint(path)
    assert lightning_fsdp2_loads == [own]
