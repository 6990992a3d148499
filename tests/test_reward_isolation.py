"""Reward isolation: a reward that raises, hangs or returns garbage scores 0, is counted and logged
once with its sample, and the run goes on; user rewards load by ``class_path``."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_dsrl.__main__ import cli_main
from lightning_dsrl.rewards import CompositeReward, FormatReward, RewardModule
from lightning_dsrl.rewards.guard import RewardTimeout, call_with_budget
from lightning_dsrl.types import PromptRecord, RewardResult

ROOT = Path(__file__).resolve().parents[1]
USER_CODE = Path(__file__).resolve().parent / "user_code"
RECORD = PromptRecord("the prompt", answer="15", meta={"numbers": [3, 7, 12], "target": 15})


@pytest.fixture
def user_code(monkeypatch):
    """``tests/user_code`` on ``sys.path``, like a user's working directory."""
    monkeypatch.syspath_prepend(str(USER_CODE))
    import my_reward

    return my_reward


def spin_forever():
    while True:
        pass


# ---------------------------------------------------------------------------- the guard
def test_the_budget_interrupts_sleep_and_busy_loops():
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(RewardTimeout):
        call_with_budget(time.sleep, 0.05, 30)
    with pytest.raises(RewardTimeout):
        call_with_budget(spin_forever, 0.05)
    assert call_with_budget(sum, 5.0, [1, 2])[0] == 3
    assert signal.getsignal(signal.SIGALRM) is before  # the handler is put back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # and nothing is left armed


def test_an_outer_timer_survives_a_budgeted_call():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        call_with_budget(sum, 5.0, [1])
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < left <= 30.0  # re-armed with what was left of it
        assert signal.getsignal(signal.SIGALRM) is not None and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_off_the_main_thread_the_call_runs_unguarded_and_is_timed():
    out = {}

    def worker():
        out["result"] = call_with_budget(time.sleep, 0.01, 0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    result, seconds = out["result"]
    assert result is None and seconds >= 0.05  # ran to its end; the caller sees it was late


# ---------------------------------------------------------------------------- the composite
class Garbage(RewardModule):
    name = "garbage_test"
    is_verifier = True

    def __init__(self, value) -> None:
        super().__init__()
        self.value = value

    def score(self, record, completion):
        return self.value


@pytest.mark.parametrize("value", [RewardResult(float("nan"), True), RewardResult(float("inf"), True),
                                   RewardResult("high", True), None, 1.0,
                                   RewardResult(1.0, True, equations="1+1=2"),  # a string, not a tuple of them
                                   RewardResult(1.0, True, equations=(2,))])
def test_an_invalid_result_scores_zero_and_counts_as_an_error(value):
    composite = CompositeReward([Garbage(value), FormatReward(weight=0.5)])
    batch = composite.score_batch([RECORD], ["<answer>1</answer>"])
    # format: 1.0 * 0.5; the garbage verifier: 0 and incorrect
    assert batch.rewards.tolist() == [0.5] and batch.correct.tolist() == [False]
    assert (batch.errors, batch.timeouts) == (1, 0) and batch.equations == [None]


def test_a_hanging_reward_times_out_once_logged_with_its_sample(user_code, caplog):
    slow = user_code.SlowReward(delay_s=30, swallow=True)  # swallowing Exception does not save it
    composite = CompositeReward([slow, FormatReward(weight=0.5)], timeout_s=0.05)
    completions = ["<answer>1</answer>", "<answer>2</answer>", "x" * 5000]
    with caplog.at_level(logging.ERROR):
        batch = composite.score_batch([RECORD] * 3, completions)
    assert batch.parts["slow"].tolist() == [0.0, 0.0, 0.0] and batch.parts["format"].tolist() == [1.0, 1.0, 0.0]
    assert batch.rewards.tolist() == [0.5, 0.5, 0.0]
    assert (batch.errors, batch.timeouts) == (0, 3)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "'slow'" in r.getMessage()]
    assert len(messages) == 1  # reported once, with the offending prompt and completion
    assert "ran past 0.05 s" in messages[0] and "the prompt" in messages[0] and "<answer>1</answer>" in messages[0]


def test_a_late_return_counts_as_a_timeout_where_it_cannot_be_interrupted(user_code):
    composite = CompositeReward([user_code.SlowReward(delay_s=0.05)], timeout_s=0.01)
    out = {}
    thread = threading.Thread(target=lambda: out.update(b=composite.score_batch([RECORD], ["a"])))
    thread.start()
    thread.join(30)
    assert out["b"].timeouts == 1 and out["b"].rewards.tolist() == [0.0]


def test_errors_and_timeouts_are_counted_apart(user_code):
    composite = CompositeReward([user_code.RaisingReward(every=2), user_code.SlowReward(delay_s=30)], timeout_s=0.05)
    batch = composite.score_batch([RECORD] * 2, ["ab", "abc"])  # "ab" has even length: RaisingReward raises
    assert (batch.errors, batch.timeouts) == (1, 2)
    assert batch.correct.tolist() == [False, True]  # "abc": RaisingReward says correct, SlowReward is no verifier


# ---------------------------------------------------------------------------- a real run
def small_run(tmp_path, model_dir, *extra) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "ds_grpo.yaml"),
        "--model.name_or_path", model_dir,
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--data.batch_size", "2", "--data.task.init_args.num_train", "8", "--data.task.init_args.num_val", "2",
            "--data.task.init_args.max_number", "6", "--data.task.init_args.max_target", "30",
        "--rollout.num_generations", "2", "--rollout.max_new_tokens", "6",
        "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "2",
        *extra,
    ]


def scalars(run_root: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(next(run_root.glob("**/events.out.tfevents.*"))))
    events.Reload()
    return [e.value for e in events.Scalars(tag)]


def test_a_fit_with_raising_and_hanging_user_rewards_completes(tmp_path, tiny_model_dir, user_code):
    rewards = ('[{class_path: CountdownReward}, {class_path: my_reward.RaisingReward}, '
               '{class_path: my_reward.SlowReward, init_args: {delay_s: 60}}]')
    cli_main(small_run(tmp_path, tiny_model_dir, "--rollout.rewards", rewards, "--rollout.reward_timeout_s", "0.05"))
    root = tmp_path / "runs"
    assert scalars(root, "train/reward_mean")  # the run logged its steps
    assert scalars(root, "reward/timeouts") == [4, 4]  # 2 prompts x 2 samples per step, each one hung
    assert scalars(root, "reward/errors") == [4, 4]  # RaisingReward raises on every completion
    assert list(root.glob("**/checkpoints/last.ckpt"))
