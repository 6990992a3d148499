"""Pretrain the embedded CountDown model: a tiny character-level Llama, by supervised learning.

    python scripts/pretrain_countdown.py                    # rebuilds lightning_dsrl/assets/countdown-lm
    python scripts/pretrain_countdown.py --output /tmp/cd --steps 300 --threads 2

The shipped model is the output of the first command with its default arguments. It is a
testbed for the RL methods, not a general LLM. The story of the DS paper (RL sharpens a model
onto the correct solutions it already prefers; DS-GRPO keeps the rare ones alive) needs a base
model that solves some CountDown problems, in several ways, with uneven preferences; and for RL
to raise correctness on problems it never trained on, the base model must make mistakes that
are the same on every problem, which RL can learn to avoid. So:

- the problems are those of ``CountdownTask`` with the settings of ``configs/ds_grpo.yaml``:
  by default (``--pool space``) every problem of its number and target ranges with >= 2
  solutions, which includes the RL run's 512 training problems, except its ``val`` and ``test``
  splits (held out: ``val`` to tune on, ``test`` to report), which the model never sees;
- each training example of a problem is one of its distinct solutions (normal form, see
  ``normalize_expression``), drawn with Zipf weights ``1 / rank**skew`` over the solutions in a
  seeded random order per problem: a diverse but uneven solution distribution;
- a share ``--wrong-fraction`` of the examples is made wrong: the drawn solution gets one mistake
  of a kind drawn uniformly from ``--wrong-kinds`` (:func:`corrupt`): ``shift`` moves one number
  by 1-3 (so a number not in the list, or one used twice), ``repeat`` writes another number of
  the list in place of one (a number used twice), ``slip`` changes one operator so that the value
  misses the target. The mistakes follow no problem, so the base model makes them on held-out
  problems as often as on the trained ones, and RL can learn to avoid them everywhere;
- the text is ``compact`` prompt + ``<answer>EXPR</answer>`` + ``</s>``, the loss is on the
  completion only.

Simplifications: one fixed seeded sampler of (problem, solution) pairs instead of epochs; no
validation during training; the final evaluation (the test and val splits and 200 of the RL
training problems, 64 samples each) uses the framework's own rollout engine (``HFEngine``,
temperature 1, no top-k/top-p), verifier (``check``) and pass@k estimator, and sorts the wrong
samples by their mistake (:func:`classify`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
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
from lightning_dsrl.metrics.functional import pass_at_k_bootstrap, powers_of_two
from lightning_dsrl.metrics.plot import Curve, passk_figure, save_figure
from lightning_dsrl.rewards.countdown import CLOSE, OPEN, check, extract_answer, normalize_expression
from lightning_dsrl.rollout.engine import SamplingParams
from lightning_dsrl.rollout.hf import HFEngine

__all__ = ["main", "parse_args", "sft_problems", "solution_weights", "corrupt", "classify", "PairSampler",
           "evaluate", "build_model"]

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "lightning_dsrl" / "assets" / "countdown-lm"
MAX_NEW_TOKENS = 32  # "<answer>" (8) + a normal-form solution (<= 10 here) + "</answer>" (9) + EOS, and slack
MISTAKES = ("shift", "repeat", "slip")
# a sample by the first check it fails (classify); all but "correct" are wrong
OUTCOMES = ("correct", "malformed", "foreign", "repeat", "missing", "value")
EVAL_TRAIN_PROBLEMS = 200  # of the RL training problems, evaluated to show where RL starts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="directory for the model, tokenizer, card and metrics")
    g = p.add_argument_group("task (must match the RL config, whose val and test splits are held out)")
    g.add_argument("--num-numbers", type=int, default=3)
    g.add_argument("--min-number", type=int, default=1)
    g.add_argument("--max-number", type=int, default=20)
    g.add_argument("--min-target", type=int, default=1)
    g.add_argument("--max-target", type=int, default=100)
    g.add_argument("--min-solutions", type=int, default=2, help="the RL task's min_solutions")
    g.add_argument("--num-train", type=int, default=512, help="the RL task's num_train")
    g.add_argument("--num-val", type=int, default=200, help="the RL task's num_val (held out here)")
    g.add_argument("--num-test", type=int, default=500, help="the RL task's num_test (held out here)")
    g.add_argument("--task-seed", type=int, default=0, help="the RL task's seed")
    g.add_argument("--pool", choices=["train", "space", "all"], default="space",
                   help="train: the RL task's train split only; space: every problem of the number/target ranges "
                        "with >= --min-solutions solutions (the train split verbatim, plus those beyond "
                        "num_train + num_val + num_test); all: likewise with >= 1 solution. Never val or test")
    g = p.add_argument_group("data mix")
    g.add_argument("--skew", type=float, default=1.0,
                   help="Zipf exponent of the solution distribution: weight 1/rank**skew (0: uniform)")
    g.add_argument("--wrong-fraction", type=float, default=0.5,
                   help="share of the training examples made wrong (0: correct solutions only)")
    g.add_argument("--wrong-kinds", nargs="+", choices=MISTAKES, default=list(MISTAKES),
                   help="the mistakes of a wrong example, one drawn uniformly per example: shift (one number moved "
                        "by 1-3), repeat (another number of the list in place of one), slip (one operator changed, "
                        "so the value misses the target)")
    g.add_argument("--mix-seed", type=int, default=0, help="seed of the mistakes (which example, kind, number, operator)")
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
    g = p.add_argument_group(f"evaluation: the test and val splits and {EVAL_TRAIN_PROBLEMS} RL training problems")
    g.add_argument("--eval-problems", type=int, default=None,
                   help="evaluate at most this many problems of each split (default: all; 0: no evaluation)")
    g.add_argument("--eval-samples", type=int, default=64, help="samples per problem: pass@k for k = 1, 2, 4, ...")
    g.add_argument("--eval-splits", nargs="+", choices=["test", "val", "train"], default=["test", "val", "train"],
                   help="the splits to evaluate (exploring a design: val and train only, keeping test for the report)")
    g.add_argument("--no-save", action="store_true", help="train and evaluate only")
    args = p.parse_args(argv)
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} must be divisible by --heads {args.heads}")
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1")
    if not 0 <= args.wrong_fraction < 1:
        p.error(f"--wrong-fraction {args.wrong_fraction}: use a share in [0, 1)")
    if min(args.num_train, args.num_val, args.num_test) < 0:
        p.error("--num-train, --num-val and --num-test must be >= 0")
    return args


# ---------------------------------------------------------------------------- data
def rl_task(args: argparse.Namespace) -> CountdownTask:
    """The ``CountdownTask`` of the RL configs (same settings, same seed, same splits)."""
    return CountdownTask(num_numbers=args.num_numbers, min_number=args.min_number, max_number=args.max_number,
                         min_target=args.min_target, max_target=args.max_target, min_solutions=args.min_solutions,
                         num_train=args.num_train, num_val=args.num_val, num_test=args.num_test, seed=args.task_seed)


Problem = tuple[tuple[int, ...], int, tuple[str, ...]]  # (numbers, target, distinct solutions in normal form)
render_prompt = CountdownTask(template="compact", num_train=0, num_val=0).render  # the RL configs' prompt text


def sft_problems(args: argparse.Namespace) -> tuple[list[Problem], dict[str, list[Problem]]]:
    """The problems to train on, and the RL task's splits: ``train``, and ``val`` and ``test`` (held
    out: never trained on), each in the order the RL task gives them."""
    pool = rl_task(args).problems()
    edges = list(itertools.accumulate([0, args.num_train, args.num_val, args.num_test]))
    if len(pool) < edges[-1]:
        raise SystemExit(f"error: only {len(pool)} problems exist for these ranges, fewer than --num-train + "
                         f"--num-val + --num-test = {edges[-1]}; ask for fewer")
    splits = {name: list(pool[a:b]) for name, a, b in zip(("train", "val", "test"), edges, edges[1:])}
    if args.pool == "train":
        return list(splits["train"]), splits
    # the RL train problems as the RL run shows them, then the rest of the space in a seeded order
    known = {(tuple(sorted(n)), t) for n, t, _ in pool}
    least = args.min_solutions if args.pool == "space" else 1
    rng = random.Random(args.task_seed + 1)
    sft = list(splits["train"])
    span = range(args.min_number, args.max_number + 1)
    for numbers in itertools.combinations_with_replacement(span, args.num_numbers):
        for target, solutions in solve(numbers, args.min_target, args.max_target).items():
            if len(solutions) >= least and (numbers, target) not in known:
                sft.append((tuple(rng.sample(numbers, len(numbers))), target, solutions))
    return sft, splits


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


def corrupt(solution: str, numbers: tuple[int, ...], target: int, kind: str, rng: random.Random) -> str | None:
    """A wrong solution made from a correct one by one mistake of ``kind``, in normal form;
    ``None`` where the kind has nothing to change (``repeat`` when all numbers are equal,
    ``slip`` when no other operator misses the target).

    >>> corrupt("2*3+4", (2, 3, 4), 10, "repeat", random.Random(0))  # the 3 written as 4: 4 used twice
    '2*4+4'
    """
    spans = [m.span() for m in re.finditer(r"\d+", solution)]
    if kind in ("shift", "repeat"):
        start, stop = rng.choice(spans)
        value = int(solution[start:stop])
        if kind == "shift":
            step = rng.randint(1, 3)
            new = value - step if value - step >= 1 and rng.random() < 0.5 else value + step
        else:
            others = sorted(set(numbers) - {value})
            if not others:
                return None
            new = rng.choice(others)
        return normalize_expression(f"{solution[:start]}{new}{solution[stop:]}")
    if kind != "slip":
        raise ValueError(f"unknown mistake {kind!r}; use one of {MISTAKES}")
    at = rng.choice([i for i, ch in enumerate(solution) if ch in "+-*/"])
    ops = [op for op in "+-*/" if op != solution[at]]
    rng.shuffle(ops)
    for op in ops:
        text = f"{solution[:at]}{op}{solution[at + 1:]}"
        if not check(f"{OPEN}{text}{CLOSE}", list(numbers), target):
            return normalize_expression(text)
    return None


def classify(completion: str, numbers: list[int] | tuple[int, ...], target: int) -> str:
    """What a completion is, by the first check it fails (one of ``OUTCOMES``): ``malformed`` (no
    expression in the grammar), ``foreign`` (a number not in the list), ``repeat`` (a number used
    more often than given), ``missing`` (a number left out), ``value`` (the right numbers, a wrong
    value), else ``correct``.

    >>> [classify(f"<answer>{e}</answer>", [2, 3, 4], 10) for e in ["2*3+4", "2*3+5", "2*4+4", "2*3", "2+3+4"]]
    ['correct', 'foreign', 'repeat', 'missing', 'value']
    """
    answer = extract_answer(completion)
    if answer is None or normalize_expression(answer) is None:
        return "malformed"
    if check(completion, list(numbers), target):
        return "correct"
    used, given = Counter(int(x) for x in re.findall(r"\d+", answer)), Counter(numbers)
    if any(x not in given for x in used):
        return "foreign"
    if any(used[x] > given[x] for x in used):
        return "repeat"
    return "missing" if used != given else "value"


class PairSampler:
    """Seeded stream of training examples: a uniform problem, one of its solutions by its Zipf
    weights, and with probability ``wrong_fraction`` one mistake of a kind drawn from ``wrong_kinds``.

    The mistakes have their own generator (``mix_seed``), so the stream of problems and solutions is
    the same whatever the mix: two models that differ only in their mix saw the same problems and
    solutions, one of them partly corrupted."""

    def __init__(self, problems: list[Problem], tokenizer, skew: float, seed: int, wrong_fraction: float = 0.0,
                 wrong_kinds: tuple[str, ...] = ("shift",), mix_seed: int = 0) -> None:
        order_rng = random.Random(seed)
        self.problems = problems
        self.weights = [solution_weights(len(solutions), skew, order_rng) for _, _, solutions in problems]
        self.prompts = [tokenizer(render_prompt(n, t), add_special_tokens=True)["input_ids"] for n, t, _ in problems]
        self.tokenizer = tokenizer
        self.rng = random.Random(seed + 1)
        self.mix_rng = random.Random(mix_seed)
        self.wrong_fraction, self.wrong_kinds = wrong_fraction, tuple(wrong_kinds)
        self.counts: Counter[str] = Counter()  # examples drawn, by kind ("correct" or a mistake)
        self._ids: dict[str, list[int]] = {}

    def draw(self, size: int) -> list[tuple[int, str, str]]:
        """``size`` examples: (problem index, solution text, ``correct`` or the mistake's kind)."""
        out = []
        for index in self.rng.choices(range(len(self.problems)), k=size):
            numbers, target, solutions = self.problems[index]
            text, kind = self.rng.choices(solutions, self.weights[index])[0], "correct"
            if self.wrong_fraction and self.mix_rng.random() < self.wrong_fraction:
                # another kind where the drawn one has nothing to change ("shift" always has)
                kinds = self.mix_rng.sample(self.wrong_kinds, len(self.wrong_kinds))
                wrong = next(((k, w) for k in kinds if (w := corrupt(text, numbers, target, k, self.mix_rng))), None)
                if wrong is not None:
                    kind, text = wrong
            self.counts[kind] += 1
            out.append((index, text, kind))
        return out

    def completion_ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = (self.tokenizer(f"{OPEN}{text}{CLOSE}", add_special_tokens=False)["input_ids"]
                               + [self.tokenizer.eos_token_id])
        return self._ids[text]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` ``[size, T]``, right-padded; labels on the completion."""
        rows = [(self.prompts[i], self.completion_ids(text)) for i, text, _ in self.draw(size)]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((size, width), self.tokenizer.pad_token_id, dtype=torch.long)
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
def evaluate(model, tokenizer, problems: list[Problem], samples: int, seed: int = 0) -> dict:
    """Sample ``samples`` completions per problem at T = 1 with the framework's ``HFEngine`` and
    report pass@k (k = 1, 2, 4, ... up to ``samples``, with a 95% bootstrap interval over problems),
    the greedy accuracy, what the samples are (``OUTCOMES``) and the diversity of the correct ones."""
    engine = HFEngine(generation_batch_size=512)
    engine.bind(SimpleNamespace(policy=model, tokenizer=tokenizer))
    prompts = [tokenizer(render_prompt(n, t), add_special_tokens=True)["input_ids"]
               for n, t, _ in problems]
    torch.manual_seed(seed)
    sampled = engine.generate(prompts, SamplingParams(n=samples, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS))
    greedy = engine.generate(prompts, SamplingParams(n=1, greedy=True, max_new_tokens=MAX_NEW_TOKENS))
    texts = tokenizer.batch_decode(sampled.token_ids, skip_special_tokens=True)
    greedy_texts = tokenizer.batch_decode(greedy.token_ids, skip_special_tokens=True)

    c, distinct, top_share, coverage, outcomes = [], [], [], [], Counter()
    greedy_correct = 0
    for i, (numbers, target, solutions) in enumerate(problems):
        found = Counter()
        for text in texts[i * samples : (i + 1) * samples]:
            outcome = classify(text, numbers, target)
            outcomes[outcome] += 1
            if outcome == "correct":
                found[normalize_expression(extract_answer(text))] += 1
        c.append(sum(found.values()))
        distinct.append(len(found))
        coverage.append(len(found) / len(solutions))
        if found:
            top_share.append(max(found.values()) / sum(found.values()))
        greedy_correct += check(greedy_texts[i], list(numbers), target)
    n_t, c_t = torch.full((len(problems),), samples), torch.tensor(c)
    ks = powers_of_two(samples)
    low, high = pass_at_k_bootstrap(n_t, c_t, ks)
    solved = [d for d in distinct if d > 0]
    total = len(problems) * samples
    return {
        "problems": len(problems),
        "samples_per_problem": samples,
        "temperature": 1.0,
        **{f"pass@{k}": round(float(pass_at_k(n_t, c_t, k).mean()), 4) for k in ks},
        "ci95": {f"pass@{k}": [round(float(lo), 4), round(float(hi), 4)] for k, lo, hi in zip(ks, low, high)},
        "greedy_accuracy": round(greedy_correct / len(problems), 4),
        # share of all samples by what they are: correct, or the first check they fail
        "outcomes": {o: round(outcomes[o] / total, 4) for o in OUTCOMES},
        "well_formed_rate": round(1 - outcomes["malformed"] / total, 4),
        # distinct correct normal forms among the samples, per problem (all problems / solved problems)
        "distinct_correct": round(sum(distinct) / len(problems), 4),
        "distinct_correct_when_solved": round(sum(solved) / max(1, len(solved)), 4),
        # share of a problem's correct samples taken by its most common correct solution (solved problems)
        "top_solution_share": round(sum(top_share) / max(1, len(top_share)), 4),
        # distinct correct solutions found / solutions that exist, per problem
        "solution_coverage": round(sum(coverage) / len(problems), 4),
        "correct_per_problem": c,  # for paired comparisons with a trained model on the same problems
    }


def passk_curves(evals: dict[str, dict]) -> list[Curve]:
    curves = []
    for label, ev in evals.items():
        ks = [int(k.split("@")[1]) for k in ev if k.startswith("pass@")]
        curves.append(Curve(label, ks, [ev[f"pass@{k}"] for k in ks], [ev["ci95"][f"pass@{k}"][0] for k in ks],
                            [ev["ci95"][f"pass@{k}"][1] for k in ks], ev["greedy_accuracy"], 0.95))
    return curves


# ---------------------------------------------------------------------------- saving
def _mix_text(args: argparse.Namespace, counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not args.wrong_fraction:
        return "correct solutions only"
    drawn = ", ".join(f"{kind} {counts.get(kind, 0) / total:.1%}" for kind in args.wrong_kinds)
    return (f"{args.wrong_fraction:.0%} of the examples made wrong with one mistake of a kind drawn uniformly from "
            f"{', '.join(args.wrong_kinds)} (drawn: {drawn} of {total} examples)")


def model_card(args: argparse.Namespace, metrics: dict, num_params: int, size_mb: float, argv: list[str]) -> str:
    held_out = f"the RL task's {args.num_val} val and {args.num_test} test problems"
    pool = {"train": "the RL task's train split",
            "space": f"every problem of these ranges with >= {args.min_solutions} solutions except {held_out}",
            "all": f"every problem of these ranges except {held_out}"}[args.pool]
    # where the files were written is no part of how they were made
    shown = [a for i, a in enumerate(argv) if a != "--output" and (i == 0 or argv[i - 1] != "--output")]
    command = " ".join(["python scripts/pretrain_countdown.py", *shown])
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
        f"- Problems: {metrics['train_problems']} (`--pool {args.pool}`: {pool}); {args.steps} steps of batch "
        f"{args.batch_size}",
        f"- Data mix: each example's solution drawn from the problem's distinct solutions with Zipf weights "
        f"1/rank^{args.skew} in a seeded random order; {_mix_text(args, metrics['data_mix'])}. Mistakes: shift = one "
        "number moved by 1-3, repeat = another number of the list in place of one, slip = one operator changed so "
        "the value misses the target",
        "- Prompt: `Numbers: 15 1 10\\nTarget: 25\\n`; completion: `<answer>1*15+10</answer></s>` (solutions in normal form)",
    ]
    names = {"test": "test (held out)", "val": "val (held out)",
             "train": "train (the RL problems, seen in pretraining: where RL starts)"}
    evals = metrics.get("eval") or {}
    if evals:
        samples = next(iter(evals.values()))["samples_per_problem"]
        ks = [k for k in (1, 8, samples) if f"pass@{k}" in next(iter(evals.values()))]
        lines += ["", f"Base figures: the RL task's splits, {samples} samples per problem at T = 1 (95% bootstrap "
                  "interval over problems). Top share: the share of a solved problem's correct samples taken by its "
                  "most common solution. Mistakes: the share of all samples by the first check they fail: a number "
                  "not in the list, one used too often, one left out, a wrong value, or no expression at all.", "",
                  "| split | problems | " + " | ".join(f"pass@{k}" for k in ks) + " | greedy | "
                  "distinct correct (solved) | top share | foreign / repeat / missing / value / malformed |",
                  "|---|---|" + "---|" * len(ks) + "---|---|---|---|"]
    for split, ev in evals.items():
        cells = [f"{ev[f'pass@{k}']:.3f} [{ev['ci95'][f'pass@{k}'][0]:.3f}, {ev['ci95'][f'pass@{k}'][1]:.3f}]"
                 for k in ks]
        o = ev["outcomes"]
        lines.append(f"| {names[split]} | {ev['problems']} | {' | '.join(cells)} | {ev['greedy_accuracy']:.3f} | "
                     f"{ev['distinct_correct_when_solved']:.2f} | {ev['top_solution_share']:.0%} | "
                     f"{o['foreign']:.3f} / {o['repeat']:.3f} / {o['missing']:.3f} / {o['value']:.3f} / "
                     f"{o['malformed']:.3f} |")
    if evals:
        lines += ["", "The curves are in `base_passk.png`; GRPO on this model, over seeds, in `docs/testbed/` and `docs/study/` of the "
                  "repository."]
    lines += ["", "Figures in `base_metrics.json`. Load with `AutoModelForCausalLM.from_pretrained` and "
              "`AutoTokenizer.from_pretrained` on this directory.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = build_char_tokenizer()
    train_problems, splits = sft_problems(args)
    model = build_model(args, tokenizer)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"{len(train_problems)} training problems ({sum(len(s) for _, _, s in train_problems)} solutions), "
          f"{len(splits['val'])} + {len(splits['test'])} held out; {num_params / 1e6:.2f}M parameters", flush=True)
    sampler = PairSampler(train_problems, tokenizer, args.skew, args.seed, args.wrong_fraction,
                          tuple(args.wrong_kinds), args.mix_seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    losses = train(model, sampler, args)
    metrics: dict = {"train_seconds": round(time.perf_counter() - start, 1),
                     # CPU time of this process: the cost on a quiet machine, whatever else shares this one
                     "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
                     "train_problems": len(train_problems),
                     "data_mix": dict(sorted(sampler.counts.items())),  # examples drawn, by kind
                     "num_parameters": num_params, "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                     "losses": losses, "args": {k: v for k, v in vars(args).items() if k != "output"}}
    model.eval()
    if args.eval_problems != 0:
        start = time.perf_counter()
        chosen = {"test": splits["test"], "val": splits["val"], "train": splits["train"][:EVAL_TRAIN_PROBLEMS]}
        metrics["eval"] = {name: evaluate(model, tokenizer, problems[: args.eval_problems], args.eval_samples, args.seed)
                           for name, problems in chosen.items() if problems and name in args.eval_splits}
        metrics["eval_seconds"] = round(time.perf_counter() - start, 1)
        for name, ev in metrics["eval"].items():
            print(f"{name}:", json.dumps({k: v for k, v in ev.items() if k != "correct_per_problem"}))
    if not args.no_save:
        out = args.output
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        saved = {k: v for k, v in metrics.items() if k != "losses"}
        saved["loss_every_50_steps"] = [round(x, 4) for x in losses[::50]]
        (out / "base_metrics.json").write_text(json.dumps(saved, indent=2) + "\n")
        if metrics.get("eval"):
            title = f"base model, pass@k ({args.eval_samples} samples per problem, T=1)"
            save_figure(passk_figure(passk_curves(metrics["eval"]), title), out / "base_passk.png")
        size_mb = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**20
        (out / "README.md").write_text(model_card(args, metrics, num_params, size_mb, argv))
        for f in out.iterdir():
            f.chmod(0o644)  # safetensors are written 0600; a wheel keeps the mode and others must read them
        print(f"saved to {out} ({size_mb:.1f} MB)")
    return metrics


if __name__ == "__main__":
    main()
