"""Pretrain the embedded CountDown model: a tiny character-level Llama, by supervised learning.

    python scripts/pretrain_countdown.py                    # rebuilds lightning_dsrl/assets/countdown-lm
    python scripts/pretrain_countdown.py --output /tmp/cd --steps 300 --threads 2

The shipped model is the output of the first command with its default arguments. It is a
testbed for the RL methods, not a general LLM: the story of the DS paper (RL sharpens a model
onto the correct solutions it already prefers; DS-GRPO keeps the rare ones alive) needs a base
model that solves some CountDown problems, in several ways, with uneven preferences. So:

- the problems are those of ``CountdownTask`` with the settings of ``configs/ds_grpo.yaml``:
  by default (``--pool space``) every problem of its number and target ranges with >= 2
  solutions, which includes the RL run's 512 training problems, except its ``val`` split (the
  200 held-out problems evaluated at the end and by ``validate``), which the model never sees;
- each training example of a problem is one of its distinct solutions (normal form, see
  ``normalize_expression``), drawn with Zipf weights ``1 / rank**skew`` over the solutions in a
  seeded random order per problem: a diverse but uneven solution distribution;
- the text is ``compact`` prompt + ``<answer>EXPR</answer>`` + ``</s>``, the loss is on the
  completion only.

Simplifications: one fixed seeded sampler of (problem, solution) pairs instead of epochs; no
validation during training; the final evaluation uses the framework's own rollout engine
(``HFEngine``, temperature 1, no top-k/top-p), verifier (``check``) and pass@k estimator.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from lightning_dsrl.char_tokenizer import build_char_tokenizer
from lightning_dsrl.data.countdown import CountdownTask, solve
from lightning_dsrl.functional import pass_at_k
from lightning_dsrl.rewards.countdown import CLOSE, OPEN, check, extract_answer, normalize_expression
from lightning_dsrl.rollout.engine import SamplingParams
from lightning_dsrl.rollout.hf import HFEngine

__all__ = ["main", "parse_args", "sft_problems", "solution_weights", "evaluate", "build_model"]

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "lightning_dsrl" / "assets" / "countdown-lm"
MAX_NEW_TOKENS = 32  # "<answer>" (8) + a normal-form solution (<= 10 here) + "</answer>" (9) + EOS, and slack


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="directory for the model, tokenizer, card and metrics")
    g = p.add_argument_group("task (must match the RL config, whose val split is held out)")
    g.add_argument("--num-numbers", type=int, default=3)
    g.add_argument("--min-number", type=int, default=1)
    g.add_argument("--max-number", type=int, default=20)
    g.add_argument("--min-target", type=int, default=1)
    g.add_argument("--max-target", type=int, default=100)
    g.add_argument("--min-solutions", type=int, default=2, help="the RL task's min_solutions")
    g.add_argument("--num-train", type=int, default=512, help="the RL task's num_train")
    g.add_argument("--num-val", type=int, default=200, help="the RL task's num_val (held out here)")
    g.add_argument("--task-seed", type=int, default=0, help="the RL task's seed")
    g.add_argument("--pool", choices=["train", "space", "all"], default="space",
                   help="train: the RL task's train split only; space: every problem of the number/target ranges "
                        "with >= --min-solutions solutions (the train split verbatim, plus those beyond "
                        "num_train + num_val); all: likewise with >= 1 solution. Never the val split")
    g = p.add_argument_group("data")
    g.add_argument("--skew", type=float, default=1.0,
                   help="Zipf exponent of the solution distribution: weight 1/rank**skew (0: uniform)")
    g = p.add_argument_group("model (a Llama with tied embeddings)")
    g.add_argument("--hidden", type=int, default=128)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--intermediate", type=int, default=None, help="MLP width (default: 3 * hidden)")
    g = p.add_argument_group("optimisation (AdamW, linear warm-up, cosine decay)")
    g.add_argument("--steps", type=int, default=750)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="the cosine ends at lr * this")
    g.add_argument("--warmup", type=int, default=30, help="warm-up steps")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads (the shipped model: 1)")
    g = p.add_argument_group("evaluation on the held-out problems")
    g.add_argument("--eval-problems", type=int, default=200, help="0: skip the evaluation")
    g.add_argument("--eval-samples", type=int, default=16)
    g.add_argument("--no-save", action="store_true", help="train and evaluate only")
    args = p.parse_args(argv)
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1")
    return args


# ---------------------------------------------------------------------------- data
def rl_task(args: argparse.Namespace) -> CountdownTask:
    """The ``CountdownTask`` of the RL configs (same settings, same seed, same splits)."""
    return CountdownTask(num_numbers=args.num_numbers, min_number=args.min_number, max_number=args.max_number,
                         min_target=args.min_target, max_target=args.max_target, min_solutions=args.min_solutions,
                         num_train=args.num_train, num_val=args.num_val, seed=args.task_seed)


Problem = tuple[tuple[int, ...], int, tuple[str, ...]]  # (numbers, target, distinct solutions in normal form)
render_prompt = CountdownTask(template="compact", num_train=0, num_val=0).render  # the RL configs' prompt text


def sft_problems(args: argparse.Namespace) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """The problems to train on, the RL task's train split and its val split (held out: never trained on)."""
    pool = rl_task(args).problems()
    rl_train, val = list(pool[: args.num_train]), list(pool[args.num_train :])
    if args.pool == "train":
        return list(rl_train), rl_train, val
    # the RL train problems as the RL run shows them, then the rest of the space in a seeded order
    known = {(tuple(sorted(n)), t) for n, t, _ in rl_train + val}
    least = args.min_solutions if args.pool == "space" else 1
    rng = random.Random(args.task_seed + 1)
    sft = list(rl_train)
    span = range(args.min_number, args.max_number + 1)
    for numbers in itertools.combinations_with_replacement(span, args.num_numbers):
        for target, solutions in solve(numbers, args.min_target, args.max_target).items():
            if len(solutions) >= least and (numbers, target) not in known:
                sft.append((tuple(rng.sample(numbers, len(numbers))), target, solutions))
    return sft, rl_train, val


def solution_weights(num: int, skew: float, rng: random.Random) -> list[float]:
    """Zipf weights ``1 / rank**skew`` (normalised) over ``num`` solutions in a random order.

    >>> solution_weights(2, 1.0, random.Random(0))  # this problem prefers its first solution, 2:1
    [0.6666666666666666, 0.3333333333333333]
    """
    ranks = list(range(1, num + 1))
    rng.shuffle(ranks)
    weights = [r ** -skew for r in ranks]
    total = sum(weights)
    return [w / total for w in weights]


class PairSampler:
    """Seeded stream of training sequences: a uniform problem, then one of its solutions by its weights."""

    def __init__(self, problems: list[Problem], tokenizer, skew: float, seed: int) -> None:
        order_rng = random.Random(seed)
        eos = tokenizer.eos_token_id
        self.items = []
        for numbers, target, solutions in problems:
            prompt = tokenizer(render_prompt(numbers, target), add_special_tokens=True)["input_ids"]
            completions = [tokenizer(f"{OPEN}{s}{CLOSE}", add_special_tokens=False)["input_ids"] + [eos]
                           for s in solutions]
            self.items.append((prompt, completions, solution_weights(len(solutions), skew, order_rng)))
        self.rng = random.Random(seed + 1)
        self.pad = tokenizer.pad_token_id

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` ``[size, T]``, right-padded; labels on the completion."""
        rows = []
        for prompt, completions, weights in self.rng.choices(self.items, k=size):
            completion = self.rng.choices(completions, weights)[0]
            rows.append((prompt, completion))
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((size, width), self.pad, dtype=torch.long)
        labels = torch.full((size, width), -100, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        for i, (prompt, completion) in enumerate(rows):
            seq = prompt + completion
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(prompt) : len(seq)] = torch.tensor(completion)
            mask[i, : len(seq)] = 1
        return ids, mask, labels


# ---------------------------------------------------------------------------- model
def build_model(args: argparse.Namespace, tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate or 3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=128,  # prompt (<= 30 chars) + completion (<= 32 tokens)
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # plain ids and a budget that fits an answer; no sampling settings (callers choose them)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, max_new_tokens=MAX_NEW_TOKENS)
    return model


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train(model: LlamaForCausalLM, sampler: PairSampler, args: argparse.Namespace) -> list[float]:
    """``args.steps`` AdamW steps; returns the loss of every step (mean per completion token)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, args.warmup, args.steps, args.min_lr_ratio))
    model.train()
    losses = []
    bar = tqdm(range(args.steps), desc="pretrain", dynamic_ncols=True)
    for _ in bar:
        ids, mask, labels = sampler.batch(args.batch_size)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
    return losses


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, tokenizer, problems: list[Problem], samples: int, seed: int = 0,
             ks: tuple[int, ...] = (1, 2, 4, 8, 16)) -> dict:
    """Sample ``samples`` completions per problem at T = 1 with the framework's ``HFEngine`` and
    report pass@k, the greedy accuracy and the diversity of the correct solutions."""
    engine = HFEngine(generation_batch_size=512)
    engine.bind(SimpleNamespace(policy=model, tokenizer=tokenizer))
    prompts = [tokenizer(render_prompt(n, t), add_special_tokens=True)["input_ids"]
               for n, t, _ in problems]
    torch.manual_seed(seed)
    sampled = engine.generate(prompts, SamplingParams(n=samples, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS))
    greedy = engine.generate(prompts, SamplingParams(n=1, greedy=True, max_new_tokens=MAX_NEW_TOKENS))
    texts = tokenizer.batch_decode(sampled.token_ids, skip_special_tokens=True)
    greedy_texts = tokenizer.batch_decode(greedy.token_ids, skip_special_tokens=True)

    n, c, distinct, top_share, coverage, well_formed = [], [], [], [], [], 0
    greedy_correct = 0
    for i, (numbers, target, solutions) in enumerate(problems):
        group = texts[i * samples : (i + 1) * samples]
        found = Counter()
        for text in group:
            answer = extract_answer(text)
            well_formed += normalize_expression(answer) is not None if answer is not None else 0
            if check(text, list(numbers), target):
                found[normalize_expression(answer)] += 1
        n.append(samples)
        c.append(sum(found.values()))
        distinct.append(len(found))
        coverage.append(len(found) / len(solutions))
        if found:
            top_share.append(max(found.values()) / sum(found.values()))
        greedy_correct += check(greedy_texts[i], list(numbers), target)
    n_t, c_t = torch.tensor(n), torch.tensor(c)
    solved = [d for d in distinct if d > 0]
    return {
        "problems": len(problems),
        "samples_per_problem": samples,
        "temperature": 1.0,
        **{f"pass@{k}": round(float(pass_at_k(n_t, c_t, k).mean()), 4) for k in ks if k <= samples},
        "greedy_accuracy": round(greedy_correct / len(problems), 4),
        "well_formed_rate": round(well_formed / (len(problems) * samples), 4),
        # distinct correct normal forms among the samples, per problem (all problems / solved problems)
        "distinct_correct": round(sum(distinct) / len(problems), 4),
        "distinct_correct_when_solved": round(sum(solved) / max(1, len(solved)), 4),
        # share of a problem's correct samples taken by its most common correct solution (solved problems)
        "top_solution_share": round(sum(top_share) / max(1, len(top_share)), 4),
        # distinct correct solutions found / solutions that exist, per problem
        "solution_coverage": round(sum(coverage) / len(problems), 4),
    }


# ---------------------------------------------------------------------------- saving
def model_card(args: argparse.Namespace, metrics: dict, num_params: int, size_mb: float, argv: list[str]) -> str:
    pool = {"train": "the RL task's train split",
            "space": f"every problem of these ranges with >= {args.min_solutions} solutions except the RL task's "
                     f"{args.num_val} val problems",
            "all": f"every problem of these ranges except the RL task's {args.num_val} val problems"}[args.pool]
    command = "python scripts/pretrain_countdown.py" + ("" if not argv else " " + " ".join(argv))
    ev = metrics.get("eval") or {}
    passk = " / ".join(f"{ev[k]:.1%}" for k in ev if k.startswith("pass@"))
    ks = " / ".join(k for k in ev if k.startswith("pass@"))
    lines = [
        "# countdown-lm: the embedded CountDown model of lightning_dsrl",
        "",
        "A tiny character-level Llama trained by supervised learning on generated CountDown problems "
        f"({args.num_numbers} numbers in {args.min_number}..{args.max_number}, targets {args.min_target}.."
        f"{args.max_target}). It is a fast, honest testbed for RL methods on a CPU, not a general language model.",
        "",
        f"- Made with: `{command}` ({metrics['train_cpu_seconds'] / 60:.1f} CPU minutes of training with "
        f"--threads {args.threads}, {metrics['train_seconds'] / 60:.1f} min wall-clock on a shared 2-core machine)",
        f"- Size: {num_params / 1e6:.2f}M parameters, {size_mb:.1f} MB (float32 safetensors); "
        f"hidden {args.hidden}, {args.layers} layers, {args.heads} heads, tied embeddings, 101-token character vocabulary",
        f"- Data: {metrics['train_problems']} problems (`--pool {args.pool}`: {pool}), "
        "each target drawn from the problem's "
        f"distinct solutions with Zipf weights 1/rank^{args.skew} in a seeded random order; "
        f"{args.steps} steps of batch {args.batch_size}",
        "- Prompt: `Numbers: 15 1 10\\nTarget: 25\\n`; completion: `<answer>1*15+10</answer></s>` (solutions in normal form)",
    ]
    if ev:
        lines += [
            f"- Held-out (the RL task's {ev['problems']} val problems, {ev['samples_per_problem']} samples at T = 1): "
            f"{ks} = {passk}; greedy accuracy {ev['greedy_accuracy']:.1%}; "
            f"{ev['distinct_correct_when_solved']:.2f} distinct correct solutions per solved problem, "
            f"the most common one taking {ev['top_solution_share']:.0%} of its correct samples",
        ]
    tr = metrics.get("eval_train_problems")
    if tr:
        top = f"pass@{tr['samples_per_problem']}"
        lines += [f"- On {tr['problems']} of the RL task's training problems (where RL starts): pass@1 {tr['pass@1']:.1%}, "
                  f"{top} {tr[top]:.1%}"]
    lines += ["", "Figures in `base_metrics.json`. Load with `AutoModelForCausalLM.from_pretrained` and "
              "`AutoTokenizer.from_pretrained` on this directory.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = build_char_tokenizer()
    train_problems, rl_train_problems, val_problems = sft_problems(args)
    model = build_model(args, tokenizer)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"{len(train_problems)} training problems ({sum(len(s) for _, _, s in train_problems)} solutions), "
          f"{len(val_problems)} held out; {num_params / 1e6:.2f}M parameters", flush=True)
    sampler = PairSampler(train_problems, tokenizer, args.skew, args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    losses = train(model, sampler, args)
    metrics: dict = {"train_seconds": round(time.perf_counter() - start, 1),
                     # CPU time of this process: the cost on a quiet machine, whatever else shares this one
                     "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
                     "train_problems": len(train_problems),
                     "num_parameters": num_params, "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                     "losses": losses, "args": {k: v for k, v in vars(args).items() if k != "output"}}
    model.eval()
    if args.eval_problems:
        start = time.perf_counter()
        metrics["eval"] = evaluate(model, tokenizer, val_problems[: args.eval_problems], args.eval_samples, args.seed)
        metrics["eval_seconds"] = round(time.perf_counter() - start, 1)
        # the same figures on the RL task's training problems (seen here too): where the RL run starts
        metrics["eval_train_problems"] = evaluate(model, tokenizer, rl_train_problems[: args.eval_problems],
                                                  args.eval_samples, args.seed)
        print("held-out problems:", json.dumps(metrics["eval"], indent=2))
        print("training problems:", json.dumps(metrics["eval_train_problems"]))
    if not args.no_save:
        out = args.output
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        for f in out.iterdir():
            f.chmod(0o644)  # safetensors are written 0600; a wheel keeps the mode and others must read them
        size_mb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
        saved = {k: v for k, v in metrics.items() if k != "losses"}
        saved["loss_every_50_steps"] = [round(x, 4) for x in losses[::50]]
        (out / "base_metrics.json").write_text(json.dumps(saved, indent=2) + "\n")
        (out / "README.md").write_text(model_card(args, metrics, num_params, size_mb, argv))
        print(f"saved to {out} ({size_mb:.1f} MB)")
    return metrics


if __name__ == "__main__":
    main()
