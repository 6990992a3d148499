"""The character tokenizer round-trips every CountDown string the embedded model reads or writes."""

from __future__ import annotations

from lightning_dsrl.char_tokenizer import CHARACTERS, SPECIAL_TOKENS, build_char_tokenizer
from lightning_dsrl.data.countdown import CountdownTask


def test_vocabulary_layout():
    tok = build_char_tokenizer()
    # 4 specials, then string.printable (100 characters) minus \x0b \x0c \r: 4 + 97 = 101
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 101
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)


def test_round_trips_every_prompt_and_solution_of_the_default_task():
    tok = build_char_tokenizer()
    task = CountdownTask()  # the settings of configs/ds_grpo.yaml: 2100 problems, ~3 solutions each
    texts = []
    for numbers, target, solutions in task.problems():
        prompt = task.render(numbers, target)
        texts += [prompt + f"<answer>{s}</answer>" for s in solutions]
    assert len(texts) > 6000
    for text, ids in zip(texts, tok(texts, add_special_tokens=True)["input_ids"]):
        assert len(ids) == len(text), text  # one token per character, nothing added
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text
        # a completion ends with EOS; skipping special tokens gives the text back
        assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text
