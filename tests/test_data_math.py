"""MathTask on local files: column mapping, answer formats, splits, templates, and bad input."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from lightning_dsrl.data import MathTask, PromptDataModule
from lightning_dsrl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "gsm8k_sample.jsonl"


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "datasets-cache")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_shipped_sample_is_the_generators_output():
    spec = importlib.util.spec_from_file_location("make_math_sample", ROOT / "scripts" / "make_math_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert SAMPLE.read_text() == module.render(module.make_sample(64, seed=0))


def test_gsm8k_sample_with_held_out_validation(cache):
    task = MathTask(str(SAMPLE), num_val=8, seed=3, cache_dir=cache)
    train, val = task.records("train"), task.records("val")
    assert (len(train), len(val)) == (56, 8) and task.skipped == {"train": 0, "val": 0}
    assert not {r.prompt for r in train} & {r.prompt for r in val}
    first = json.loads(SAMPLE.read_text().splitlines()[0])
    expected = first["answer"].rsplit("####", 1)[1].strip()
    by_question = {r.meta["question"]: r for r in train + val}
    assert by_question[first["question"]].answer == expected
    assert by_question[first["question"]].prompt.startswith(first["question"] + "\nPlease reason step by step")
    again = MathTask(str(SAMPLE), num_val=8, seed=3, cache_dir=cache)
    assert [r.prompt for r in again.records("val")] == [r.prompt for r in val]  # the hold-out is seeded
    other = MathTask(str(SAMPLE), num_val=8, seed=4, cache_dir=cache)
    assert [r.prompt for r in other.records("val")] != [r.prompt for r in val]


def test_math_format_with_column_mapping_parquet_and_a_validation_file(tmp_path, cache):
    import datasets

    rows = [
        {"problem": "What is $1/2 + 1/4$?", "solution": r"We get $\frac{2}{4} + \frac{1}{4} = \boxed{\frac{3}{4}}$."},
        {"problem": "Solve $x + 1 = 3$.", "solution": r"So $x = \boxed{2}$."},
        {"problem": "Find the set.", "solution": r"It is $\boxed{\{1, \{2\}\}}$."},
    ]
    train = tmp_path / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(train))
    val = write_jsonl(tmp_path / "val.jsonl", [{"problem": "What is 2+2?", "solution": r"$\boxed{4}$"}])
    task = MathTask(str(train), val_split=val, question_key="problem", answer_key="solution",
                    answer_format="boxed", template="r1_zero", cache_dir=cache)
    records = task.records("train")
    assert [r.answer for r in records] == [r"\frac{3}{4}", "2", r"\{1, \{2\}\}"]
    assert "User: What is $1/2 + 1/4$?. Assistant:" in records[0].prompt and "<answer>" in records[0].prompt
    assert [r.answer for r in task.records("val")] == ["4"]


def test_plain_answers_json_file_own_template_and_chat_flag(tmp_path, cache):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"q": "Compute {a}^{2} for a = 3.", "a": " 9 "}, {"q": "2 * 4?", "a": "8"}]))
    task = MathTask(str(path), num_val=0, question_key="q", answer_key="a", answer_format="plain",
                    template="Q: {question}\nA:", chat=True, cache_dir=cache)
    records = task.records("train")
    # the question's own braces survive (no str.format on the question)
    assert records[0].prompt == "Q: Compute {a}^{2} for a = 3.\nA:" and records[0].answer == "9"
    assert all(r.chat for r in records) and len(task.records("val")) == 0


def test_rows_without_a_readable_answer_are_skipped_counted_and_warned(tmp_path, cache, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "a", "answer": "1 + 1 = 2\n#### 2"},
        {"question": "b", "answer": "no final marker"},
        {"question": "c", "answer": "#### many"},
        {"question": "d", "answer": "#### 4"},
    ])
    task = MathTask(path, num_val=0, cache_dir=cache)
    with caplog.at_level(logging.WARNING, logger="lightning_dsrl.data.math"):
        records = task.records("train")
    assert [r.answer for r in records] == ["2", "4"] and task.skipped["train"] == 2
    assert "skipped 2 of 4 train rows" in caplog.text


def test_num_train_limits_training_rows(cache):
    task = MathTask(str(SAMPLE), num_val=4, num_train=10, cache_dir=cache)
    assert len(task.records("train")) == 10 and len(task.records("val")) == 4


def test_missing_column_lists_the_columns(tmp_path, cache):
    task = MathTask(str(SAMPLE), question_key="problem", cache_dir=cache)
    with pytest.raises(ConfigError, match=r"question_key='problem'.*columns are \['question', 'answer'\]"):
        task.records("train")


def test_construction_reads_nothing_and_missing_files_fail_at_setup(tmp_path, cache):
    task = MathTask(str(tmp_path / "absent.jsonl"), cache_dir=cache)  # no error yet: nothing is read here
    with pytest.raises(ConfigError, match="data.task.dataset=.*no such file"):
        task.records("train")
    with pytest.raises(ConfigError, match="local file with one split, 'train' \\(not 'test'\\)"):
        MathTask(str(SAMPLE), split="test", cache_dir=cache).records("train")
    with pytest.raises(ConfigError, match="local file with one split"):
        MathTask(str(SAMPLE), val_split="test", cache_dir=cache).records("train")


def test_hub_dataset_when_offline_is_one_clear_message(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    task = MathTask("openai/gsm8k", subset="main", cache_dir=cache)
    with pytest.raises(ConfigError) as info:
        task.records("train")
    message = str(info.value)
    assert "data.task.dataset='openai/gsm8k' is not in the local datasets cache" in message
    assert "local .jsonl" in message


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="template"):
        MathTask("x.jsonl", template="no placeholder")
    with pytest.raises(ConfigError, match="answer_format"):
        MathTask("x.jsonl", answer_format="latex")


def test_datamodule_batches_math_records(cache):
    dm = PromptDataModule(MathTask(str(SAMPLE), num_val=4, cache_dir=cache), batch_size=5)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 5 and all(r.answer and r.prompt for r in batch.records)
    assert sum(len(b) for b in dm.val_dataloader()) == 4
