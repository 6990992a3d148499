"""Math word problems from a ``datasets`` source: a hub dataset or a local jsonl/json/parquet/csv file.

    dataset: openai/gsm8k         subset: main    split: train    val_split: test
    dataset: data/my_problems.jsonl               (one split; validation held out by seed)

Each row gives a question (``question_key``) and a reference answer (``answer_key``), read as
``answer_format``: ``gsm8k`` (the number after the final ``####``), ``boxed`` (the last
``\\boxed{}`` of a worked solution, MATH's ``solution`` column) or ``plain`` (the column is the
answer, e.g. MATH-500's ``answer``). Rows whose answer cannot be read are skipped, counted in
``skipped`` and reported in one warning. The prompt is the question in a template; ``chat``
sends it through the tokenizer's chat template. Verify completions with ``MathReward``.

Nothing is read or downloaded when the task is constructed: the data is loaded on the first
``records()`` call (in ``PromptDataModule`` setup), so configs instantiate offline.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Literal

from lightning_dsrl.data.base import Split, Task
from lightning_dsrl.errors import ConfigError
from lightning_dsrl.rewards.math import gsm8k_answer, last_boxed
from lightning_dsrl.types import PromptRecord

__all__ = ["MathTask", "MATH_TEMPLATES", "LOCAL_FORMATS"]

log = logging.getLogger(__name__)

MATH_TEMPLATES = {
    # Qwen2.5-Math's chain-of-thought instruction
    "plain": "{question}\nPlease reason step by step, and put your final answer within \\boxed{}.",
    # DeepSeek-R1-Zero's prompt (DeepSeek-AI 2025, Table 1): think, then answer in tags
    "r1_zero": (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with "
        "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
        "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
        "</answer>. User: {question}. Assistant:"
    ),
}

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def reference_answer(text: Any, answer_format: str) -> str | None:
    """The reference answer of a row as a LaTeX string, or ``None`` when it cannot be read.

    >>> reference_answer("3 + 4 = 7\\n#### 7", "gsm8k"), reference_answer("so $\\\\boxed{\\\\frac{1}{2}}$", "boxed")
    ('7', '\\\\frac{1}{2}')
    """
    if text is None:
        return None
    text = str(text)
    if answer_format == "gsm8k":
        return gsm8k_answer(text)
    if answer_format == "boxed":
        return last_boxed(text) or None
    return text.strip() or None


def _is_local(source: str) -> bool:
    return Path(source).suffix.lower() in LOCAL_FORMATS or Path(source).expanduser().is_dir()


class MathTask(Task):
    """Math word problems with reference answers, from a hub dataset or a local file.

    Args:
        dataset: a hub id (``openai/gsm8k``, ``HuggingFaceH4/MATH-500``), a local ``.jsonl``,
            ``.json``, ``.parquet`` or ``.csv`` file, or a local folder of such files.
        subset: the hub dataset's configuration (``main`` for GSM8K), if it has several.
        split: the split training prompts come from (a local file has one split, ``train``).
        val_split: where validation prompts come from: another split (``test``) or a local file.
            ``None``: hold out ``num_val`` rows of ``split``, chosen with ``seed``.
        num_val: rows held out for validation when ``val_split`` is ``None``.
        num_train: use only the first this-many training rows (``None``: all).
        question_key: the column holding the question.
        answer_key: the column holding the answer or the worked solution.
        answer_format: ``gsm8k`` (``#### 42``), ``boxed`` (last ``\\boxed{}``) or ``plain``.
        template: ``plain`` (step by step, answer in ``\\boxed{}``), ``r1_zero`` (think, then
            ``<answer>``), or your own text with ``{question}``.
        chat: send the prompt through the tokenizer's chat template.
        seed: seed of the validation hold-out.
        cache_dir: where ``datasets`` keeps its cache (default: its own, ``~/.cache/huggingface``).
    """

    def __init__(
        self,
        dataset: str,
        subset: str | None = None,
        split: str = "train",
        val_split: str | None = None,
        num_val: int = 100,
        num_train: int | None = None,
        question_key: str = "question",
        answer_key: str = "answer",
        answer_format: Literal["gsm8k", "boxed", "plain"] = "gsm8k",
        template: str = "plain",
        chat: bool = False,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if answer_format not in ("gsm8k", "boxed", "plain"):
            raise ConfigError(f"data.task.answer_format={answer_format!r}: use gsm8k, boxed or plain")
        if num_val < 0 or (num_train is not None and num_train < 1):
            raise ConfigError("data.task.num_val must be >= 0 and data.task.num_train >= 1 (or null)")
        self.template = MATH_TEMPLATES.get(template, template)
        if "{question}" not in self.template:
            raise ConfigError(f"data.task.template must be one of {sorted(MATH_TEMPLATES)} or contain {{question}}")
        self.dataset, self.subset, self.split, self.val_split = dataset, subset, split, val_split
        self.num_val, self.num_train = num_val, num_train
        self.question_key, self.answer_key, self.answer_format = question_key, answer_key, answer_format
        self.chat, self.seed, self.cache_dir = chat, seed, cache_dir
        self.skipped: dict[str, int] = {}  # rows without a readable answer, per split
        self._rows: dict[str, list[dict[str, Any]]] | None = None

    # ------------------------------------------------------------------ loading
    def _load(self, source: str, split: str, option: str) -> Any:
        """A ``datasets.Dataset``; every failure becomes a ConfigError naming ``option``."""
        import datasets  # heavy; only when data is actually needed

        if _is_local(source):
            path = Path(source).expanduser()
            if not path.exists():
                raise ConfigError(f"data.task.{option}={source!r}: no such file (relative paths start at the "
                                  f"working directory, {Path.cwd()})")
            if path.is_dir():
                return self._call(datasets.load_dataset, option, source, str(path), split=split)
            if split != "train":
                raise ConfigError(f"data.task: {source!r} is a local file with one split, 'train' (not {split!r}); "
                                  "for validation point data.task.val_split at a second file, or leave it null "
                                  "to hold out data.task.num_val rows")
            builder = LOCAL_FORMATS[path.suffix.lower()]
            return self._call(datasets.load_dataset, option, source, builder, data_files=str(path), split="train")
        return self._call(datasets.load_dataset, option, source, source, self.subset, split=split)

    def _call(self, load, option: str, source: str, *args, **kwargs) -> Any:
        try:
            return load(*args, cache_dir=self.cache_dir, **kwargs)
        except ConnectionError as err:
            raise ConfigError(
                f"data.task.{option}={source!r} is not in the local datasets cache and the hub cannot be reached "
                f"({err}). Download it once on a machine with network (same HF_HOME), or point "
                f"data.task.{option} at a local .jsonl/.json/.parquet/.csv file"
            ) from None
        except ValueError as err:
            if "split" in str(err).lower():
                raise ConfigError(f"data.task: {source!r} has no split {kwargs.get('split')!r} ({err})") from None
            if "config" in str(err).lower():
                raise ConfigError(f"data.task.subset={self.subset!r} for {source!r}: {err}") from None
            raise ConfigError(f"data.task.{option}={source!r}: could not be read ({err})") from None
        except FileNotFoundError as err:
            raise ConfigError(f"data.task.{option}={source!r}: not found ({err}); give a hub id such as "
                              "'openai/gsm8k' or a local .jsonl/.json/.parquet/.csv file") from None

    def _check_columns(self, table: Any, source: str) -> None:
        columns = list(table.column_names)
        for option, key in (("question_key", self.question_key), ("answer_key", self.answer_key)):
            if key not in columns:
                raise ConfigError(f"data.task.{option}={key!r}: {source!r} has no such column; its columns are "
                                  f"{columns}")

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The raw ``{question, answer}`` rows of both splits, loaded once."""
        if self._rows is None:
            train = self._load(self.dataset, self.split, "dataset")
            self._check_columns(train, self.dataset)
            train_rows = self._select(train)
            if self.val_split is None:
                held_out = set(random.Random(self.seed).sample(range(len(train_rows)), min(self.num_val,
                                                                                          len(train_rows))))
                val_rows = [r for i, r in enumerate(train_rows) if i in held_out]
                train_rows = [r for i, r in enumerate(train_rows) if i not in held_out]
            else:
                if _is_local(self.val_split):  # a second file
                    source, val = self.val_split, self._load(self.val_split, "train", "val_split")
                else:  # another split of the same dataset
                    source, val = self.dataset, self._load(self.dataset, self.val_split, "dataset")
                self._check_columns(val, source)
                val_rows = self._select(val)
            if self.num_train is not None:
                train_rows = train_rows[: self.num_train]
            self._rows = {"train": train_rows, "val": val_rows}
        return self._rows

    def _select(self, table: Any) -> list[dict[str, Any]]:
        return [{"question": q, "answer": a} for q, a in zip(table[self.question_key], table[self.answer_key])]

    # ------------------------------------------------------------------ records
    def build(self, split: Split) -> list[PromptRecord]:
        records = []
        skipped = 0
        for row in self.rows()[split]:
            answer = reference_answer(row["answer"], self.answer_format)
            if answer is None or row["question"] is None:
                skipped += 1
                continue
            question = str(row["question"]).strip()
            records.append(PromptRecord(
                prompt=self.template.replace("{question}", question),  # not str.format: LaTeX has braces
                answer=answer,
                meta={"question": question},
                chat=self.chat,
            ))
        self.skipped[split] = skipped
        if skipped:
            log.warning("MathTask: skipped %d of %d %s rows of %r whose %r column has no answer readable as "
                        "answer_format=%r", skipped, skipped + len(records), split, self.dataset, self.answer_key,
                        self.answer_format)
        return records
