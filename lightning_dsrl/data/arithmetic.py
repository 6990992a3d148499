"""Addition problems with worked examples: the easy task for small pretrained LLMs.

SmolLM2-135M-Instruct (the 4-bit file we ship) solves no CountDown problem and almost no
two-digit sum; on one-digit sums with three worked examples given as earlier chat turns
(``shots: 3, chat: true``) it is right about one time in eight, often enough (and wrong often
enough) for RL to have a signal. Problems are generated from a seed; the answer is checked by
:class:`~lightning_dsrl.rewards.numeric.NumericAnswerReward`.
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
        shots: worked examples before each question, drawn first from the seed (so in neither
            split) and written in ``template``'s words with the answer in ``<answer>`` tags: earlier
            user and assistant turns with ``chat``, else lines of text before the question.
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
        shots: int = 0,
    ) -> None:
        super().__init__()
        if num_digits < 1 or num_terms < 2:
            raise ConfigError("data.task: AdditionTask needs num_digits >= 1 and num_terms >= 2")
        if shots < 0:
            raise ConfigError(f"data.task.shots={shots}: give 0 or more worked examples")
        if shots and template == "oneshot":
            raise ConfigError("data.task: template 'oneshot' already holds its own worked example; "
                              "use template 'plain' (or your own) with shots")
        low, high = 10 ** (num_digits - 1) if num_digits > 1 else 0, 10**num_digits - 1
        space = (high - low + 1) ** num_terms
        if num_train + num_val + shots > space:
            raise ConfigError(
                f"data.task: {num_train + num_val + shots} problems requested (train, val and shots) but only "
                f"{space} distinct {num_terms}-term sums of {num_digits}-digit numbers exist; lower num_train/num_val"
            )
        self.low, self.high, self.num_terms = low, high, num_terms
        self.num_train, self.num_val, self.seed, self.chat, self.shots = num_train, num_val, seed, chat, shots
        self.template = ADDITION_TEMPLATES.get(template, template)
        if "{question}" not in self.template:
            raise ConfigError(f"data.task.template must be one of {sorted(ADDITION_TEMPLATES)} or contain {{question}}")

    def question(self, terms: tuple[int, ...]) -> str:
        return self.template.format(question=" + ".join(map(str, terms)))

    def build(self, split: Split) -> list[PromptRecord]:
        rng = random.Random(self.seed)
        seen: set[tuple[int, ...]] = set()
        problems: list[tuple[int, ...]] = []
        while len(problems) < self.shots + self.num_train + self.num_val:
            terms = tuple(rng.randint(self.low, self.high) for _ in range(self.num_terms))
            if terms not in seen:
                seen.add(terms)
                problems.append(terms)
        examples, problems = problems[: self.shots], problems[self.shots :]
        history = [turn for terms in examples for turn in (
            {"role": "user", "content": self.question(terms)},
            {"role": "assistant", "content": f"<answer>{sum(terms)}</answer>"})]
        prefix = "".join(f"{turn['content']}\n" for turn in history) if not self.chat else ""
        chosen = problems[: self.num_train] if split == "train" else problems[self.num_train :]
        return [
            PromptRecord(
                prompt=prefix + self.question(terms),
                answer=str(sum(terms)),
                meta={"terms": list(terms)},
                chat=self.chat,
                history=list(history) if self.chat else [],
            )
            for terms in chosen
        ]
