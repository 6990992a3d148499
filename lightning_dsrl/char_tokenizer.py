"""A character-level tokenizer built in code, saved and loaded like any hub tokenizer.

Used by the embedded CountDown model and by the tiny models of the test-suite. Each printable
ASCII character is one token; four special tokens come first (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2,
``<unk>`` 3). Any other character maps to ``<unk>``.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = ["build_char_tokenizer", "CHARACTERS", "SPECIAL_TOKENS"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = tuple(c for c in string.printable if c not in "\x0b\x0c\r")


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer (101 tokens): every printable ASCII character plus the specials.

    >>> tok = build_char_tokenizer()
    >>> tok.decode(tok("<answer>3*4</answer>").input_ids)
    '<answer>3*4</answer>'
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one char each
    backend.decoder = decoders.Fuse()  # join characters without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
