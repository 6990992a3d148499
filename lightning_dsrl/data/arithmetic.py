"""Multi-digit addition with a one-shot example: the easy task for small pretrained LLMs.

SmolLM2-135M-Instruct solves no CountDown problem at temperature 1.0, so RL on CountDown
teaches it nothing; on two-digit addition with one worked example in the prompt it is right
often enough (and wrong often enough) for RL to have a signal. Problems are generated from a
seed; the answer is checked by :class:`~lightning_dsrl.rewards.numeric.NumericAnswerReward`.
"""

from __future__ import annotations

import random

from lightning_dsrl.data.base import Split, Task
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.types import PromptRecord

__all__ = ["AdditionTask", "ADDITION_TEMPLATES"]

ADDITION_TEMPLATES = {
    "oneshot": (
        "Add the numbers. Write the result inside <answer> </answer> tags.\n"
        "Question: 23 + 45\nAnswer: <answer>68</answer>\n"
        "Question: {question}\nAnswer:"
    ),
    "plain": "What is {question}? Write the result inside <answer> </answer> tags.",
}


class AdditionTask(Task):
    """Seeded addition problems ``a + b (+ ...)`` with ``num_digits``-digit terms.

    Args:
        num_digits: digits of each term (2 gives 10..99).
        num_terms: how many terms are added.
        num_train: training problems.
        num_val: held-out problems (disjoint from training).
        seed: generator seed.
        template: ``oneshot``, ``plain``, or a format string with ``{question}``.
        chat: send the prompt through the tokenizer's chat template.
    """

    def __init__(
        self,
        num_digits: int = 2,
        num_terms: int = 2,
        num_train: int = 2000,
        num_val: int = 200,
        seed: int = 0,
        template: str = "oneshot",
        chat: bool = False,
    ) -> None:
        super().__init__()
        if num_digits < 1 or num_terms < 2:
            raise ConfigError("data.task: AdditionTask needs num_digits >= 1 and num_terms >= 2")
        low, high = 10 ** (num_digits - 1) if num_digits > 1 else 0, 10**num_digits - 1
        space = (high - low + 1) ** num_terms
        if num_train + num_val > space // 2:
            raise ConfigError(
                f"data.task: {num_train + num_val} problems requested but only {space} distinct "
                f"{num_terms}-term sums of {num_digits}-digit numbers exist; lower num_train/num_val"
            )
        self.low, self.high, self.num_terms = low, high, num_terms
        self.num_train, self.num_val, self.seed, self.chat = num_train, num_val, seed, chat
        self.template = ADDITION_TEMPLATES.get(template, template)
        if "{question}" not in self.template:
            raise ConfigError(f"data.task.template must be one of {sorted(ADDITION_TEMPLATES)} or contain {{question}}")

    def build(self, split: Split) -> list[PromptRecord]:
        rng = random.Random(self.seed)
        seen: set[tuple[int, ...]] = set()
        problems: list[tuple[int, ...]] = []
        while len(problems) < self.num_train + self.num_val:
            terms = tuple(rng.randint(self.low, self.high) for _ in range(self.num_terms))
            if terms not in seen:
                seen.add(terms)
                problems.append(terms)
        chosen = problems[: self.num_train] if split == "train" else problems[self.num_train :]
        return [
            PromptRecord(
                prompt=self.template.format(question=" + ".join(map(str, terms))),
                answer=str(sum(terms)),
                meta={"terms": list(terms)},
                chat=self.chat,
            )
            for terms in chosen
        ]
