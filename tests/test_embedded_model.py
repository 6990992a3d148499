"""The embedded CountDown model: shipped in the package, loads offline, answers well-formed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lightning_dsrl.char_tokenizer import build_char_tokenizer
from lightning_dsrl.data.countdown import CountdownTask
from lightning_dsrl.models import DEFAULT_MODEL, ModelSpec, load_model, load_tokenizer, resolve_model_path
from lightning_dsrl.rewards.countdown import check, extract_answer, parse_expression
from lightning_dsrl.rollout.engine import SamplingParams
from lightning_dsrl.rollout.hf import HFEngine

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_files_and_size():
    path = Path(resolve_model_path(DEFAULT_MODEL))
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "base_metrics.json", "README.md", "base_passk.png"):
        assert (path / name).is_file(), name
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20 * 2**20
    # the setuptools rule that puts them into the wheel
    assert 'lightning_dsrl = ["assets/**/*"]' in (ROOT / "pyproject.toml").read_text()
    # the testbed's targets for the base model, on the held-out val problems it was designed on (64 samples
    # each); the test split's figures, over seeds, are the study's base arm (docs/study/)
    metrics = json.loads((path / "base_metrics.json").read_text())
    val = metrics["eval"]["val"]
    assert val["problems"] == 200 and val["samples_per_problem"] == 64
    assert 0.15 <= val["pass@1"] <= 0.40 and val["pass@64"] >= 0.85
    assert metrics["args"]["wrong_fraction"] > 0  # the mistakes RL can learn to avoid are in the data


def test_loads_offline_from_the_package_path():
    # a fresh interpreter, so the hub library reads HF_HUB_OFFLINE at import as it would for a user
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from lightning_dsrl.models import DEFAULT_MODEL, resolve_model_path\n"
        "p = resolve_model_path(DEFAULT_MODEL)\n"
        "m = AutoModelForCausalLM.from_pretrained(p); t = AutoTokenizer.from_pretrained(p)\n"
        "print(type(m).__name__, len(t), t.eos_token_id, m.generation_config.eos_token_id)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(ROOT / ".no-hf-home"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["LlamaForCausalLM", "101", "2", "2"]


def test_shipped_tokenizer_is_the_char_tokenizer():
    shipped = load_tokenizer(ModelSpec())
    assert shipped.get_vocab() == build_char_tokenizer().get_vocab()
    assert (shipped.pad_token_id, shipped.eos_token_id) == (0, 2)


def test_greedy_answers_are_well_formed():
    spec = ModelSpec()
    module = type("M", (), {})()
    module.policy, module.tokenizer = load_model(spec).eval(), load_tokenizer(spec)
    engine = HFEngine()
    engine.bind(module)
    task = CountdownTask()
    problems = task.problems()[:16]  # training problems of the default config
    prompts = [module.tokenizer(task.render(n, t))["input_ids"] for n, t, _ in problems]
    out = engine.generate(prompts, SamplingParams(greedy=True, max_new_tokens=32))
    texts = module.tokenizer.batch_decode(out.token_ids, skip_special_tokens=True)
    assert all(out.finished), texts  # every answer stops with EOS within the budget
    for text in texts:
        assert text.startswith("<answer>") and text.endswith("</answer>"), text
        assert parse_expression(extract_answer(text)) is not None, text
    # the model was trained on these problems; greedy decoding solves most of them
    solved = sum(check(text, list(n), t) for text, (n, t, _) in zip(texts, problems))
    assert solved >= 8, texts
