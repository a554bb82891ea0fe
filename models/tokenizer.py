"""A character-level fast tokenizer for the embedded arithmetic model.

Built with the ``tokenizers`` library and wrapped as a ``PreTrainedTokenizerFast`` so it is saved and loaded
exactly like a hub model's tokenizer (``AutoTokenizer.from_pretrained(dir)``).
"""

from __future__ import annotations

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
