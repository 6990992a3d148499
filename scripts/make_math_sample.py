"""Write the GSM8K-format sample that ships in ``tests/data/gsm8k_sample.jsonl``.

Simple one- and two-step arithmetic word problems from a seeded generator, in GSM8K's format:
``{"question": ..., "answer": "<worked steps with <<a+b=c>> annotations>\\n#### c"}``. Nothing
is copied from a real dataset; the same seed writes the same file on every machine (a test
checks that the shipped file is this script's output).

    python scripts/make_math_sample.py                       # tests/data/gsm8k_sample.jsonl, 64 rows
    python scripts/make_math_sample.py --num 500 --out my.jsonl --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kira", "Liam"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "books", "shells", "stamps"]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm8k_sample.jsonl"


def _problem(rng: random.Random) -> dict[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        c = a + b
        question = f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?"
        steps = f"{name} has {a} + {b} = <<{a}+{b}={c}>>{c} {item}."
    elif kind == 1:
        a = rng.randint(20, 90)
        b = rng.randint(2, a - 5)
        c = a - b
        question = f"{name} has {a} {item} and gives {b} of them to a friend. How many {item} are left?"
        steps = f"{name} has {a} - {b} = <<{a}-{b}={c}>>{c} {item} left."
    elif kind == 2:
        a, b = rng.randint(3, 12), rng.randint(2, 9)
        c = a * b
        question = f"A box holds {a} {item}. How many {item} are in {b} boxes?"
        steps = f"There are {a} * {b} = <<{a}*{b}={c}>>{c} {item}."
    elif kind == 3:
        c, b = rng.randint(2, 12), rng.randint(2, 8)
        a = b * c
        question = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        steps = f"Each friend gets {a} / {b} = <<{a}/{b}={c}>>{c} {item}."
    elif kind == 4:
        packs, each = rng.randint(2, 6), rng.randint(3, 10)
        total = packs * each
        eaten = rng.randint(1, total - 1)
        c = total - eaten
        question = (f"{name} buys {packs} packs of {item} with {each} {item} in each pack, then gives away "
                    f"{eaten}. How many {item} does {name} have?")
        steps = (f"{name} buys {packs} * {each} = <<{packs}*{each}={total}>>{total} {item}.\n"
                 f"After giving some away, {name} has {total} - {eaten} = <<{total}-{eaten}={c}>>{c} {item}.")
    else:
        rate, hours, spent = rng.randint(5, 25), rng.randint(2, 8), rng.randint(1, 20)
        earned = rate * hours
        c = earned - spent
        question = (f"{name} earns ${rate} per hour and works {hours} hours, then spends ${spent} on lunch. "
                    f"How many dollars does {name} have left?")
        steps = (f"{name} earns {rate} * {hours} = <<{rate}*{hours}={earned}>>{earned} dollars.\n"
                 f"After lunch {name} has {earned} - {spent} = <<{earned}-{spent}={c}>>{c} dollars.")
    return {"question": question, "answer": f"{steps}\n#### {c}"}


def make_sample(num: int = 64, seed: int = 0) -> list[dict[str, str]]:
    """``num`` distinct problems, the same for the same ``seed``."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < num:
        row = _problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def render(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=64, help="number of problems (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(make_sample(args.num, args.seed)))
    print(f"wrote {args.num} problems to {args.out}")


if __name__ == "__main__":
    main()
