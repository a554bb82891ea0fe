"""A character-level fast tokenizer for the embedded arithmetic model.

Built with the ``tokenizers`` library and wrapped as a ``PreTrainedTokenizerFast`` so it is saved and loaded
exactly like a hub model's tokenizer (``AutoTokenizer.from_pretrained(dir)``).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|eot|>"
MASK_TOKEN = "<|mask|>"
BOS_TOKEN = "<|bos|>"
SPECIAL_TOKENS = (EOS_TOKEN, MASK_TOKEN, BOS_TOKEN)
CHARACTERS = tuple("0123456789") + tuple("+-*=,#: ")


def build_char_tokenizer(characters: tuple[str, ...] = CHARACTERS) -> PreTrainedTokenizerFast:
    """One token per character, three special tokens (end-of-text doubles as padding)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(characters))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        bos_token=BOS_TOKEN,
        padding_side="left",
    )



def build_placeholder_tokenizer(vocab_size: int, eos_id: int, mask_id: int,
                                end_of_turn_ids: Sequence[int] = ()) -> PreTrainedTokenizerFast:
    """A tokenizer for a model with random weights and no tokenizer of its own: printable ASCII characters one
    token each (ids from 0), end-of-text (also padding), mask and end-of-turn tokens at the model's ids, and a
    placeholder ``<|id|>`` for every other id, so any prompt encodes and any output decodes. The text it gives
    means nothing; it is for timing."""
    characters = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    specials = {"<|endoftext|>": eos_id, "<|mask|>": mask_id,
                **{f"<|end_of_turn_{i}|>": token for i, token in enumerate(end_of_turn_ids)}}
    ids = set(specials.values())
    if min(ids) < len(characters) or max(ids) >= vocab_size:
        raise ValueError(f"special token ids {sorted(ids)} must lie in {len(characters)}..{vocab_size - 1}")
    vocab = {c: i for i, c in enumerate(characters)} | specials
    vocab |= {f"<|{i}|>": i for i in range(len(characters), vocab_size) if i not in ids}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")  # (?m): "." matches newlines too
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   mask_token="<|mask|>", padding_side="left",
                                   additional_special_tokens=list(specials)[2:])
