"""Turning task examples into token tensors: prompts for decoding, masked-diffusion batches for pretraining."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset

from models.errors import ConfigError, InputError, first_line
from pipeline.tasks.base import Example


def encode_prompt(tokenizer, example: Example, chat_template: bool = False) -> list[int]:
    """Prompt token ids. Through the chat template, the whole (few-shot) prompt is one user turn followed by the
    assistant's header, as the reference evaluations of instruction-tuned dLLMs do; otherwise the
    beginning-of-text token when the tokenizer has one, then the text."""
    prompt = example.prompt
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("task.chat_template", True, "the model's tokenizer has no chat template; allowed: false")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenize(tokenizer, text, example)
    ids = tokenize(tokenizer, prompt, example)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def tokenize(tokenizer, text: str, example: Example) -> list[int]:
    """Token ids of ``text``; a tokenizer without an unknown token refuses characters it lacks, and that is the
    prompt's fault, named with where the prompt came from."""
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except Exception as error:  # tokenizers raises a bare Exception ("Missing [UNK] token ...")
        vocab = tokenizer.get_vocab()
        special = set(tokenizer.all_special_tokens)
        char_level = all(len(token) == 1 for token in vocab if token not in special)
        lacking = sorted({c for c in text if c not in vocab}) if char_level else []
        what = f"holds characters the model's tokenizer lacks: {''.join(lacking)!r}" if lacking else \
            f"cannot be tokenized ({first_line(error)})"
        raise InputError(example.source or "a prompt", f"the prompt {text[:60]!r} {what}",
                         "remove them from the prompt, or use a model whose tokenizer has them") from error


def decode_answer(tokenizer, window: Sequence[int], end_ids: Sequence[int] = ()) -> str:
    """Generated text up to the first token that ends it (end-of-text, or end-of-turn for chat models)."""
    ends = set(end_ids) or {tokenizer.eos_token_id}
    ids = list(window)
    first = next((i for i, tok in enumerate(ids) if tok in ends), len(ids))
    return tokenizer.decode(ids[:first], skip_special_tokens=True)


def training_batch(tokenizer, examples: Sequence[Example], window: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by answers padded with end-of-text up to ``window`` tokens.

    A window of 0 means "tight": the longest answer plus one end-of-text, the context a sequence has after an
    EoTP cut, which a model trained only on long padded windows has never seen. ``answer_region`` marks the
    positions the diffusion objective may mask (never the prompt).
    """
    prompts = [encode_prompt(tokenizer, ex) for ex in examples]
    answers = [tokenizer(ex.answer, add_special_tokens=False)["input_ids"] for ex in examples]
    window = window or max(len(a) for a in answers) + 1
    too_long = [len(a) for a in answers if len(a) > window]
    if too_long:
        raise ValueError(f"an answer of {max(too_long)} tokens does not fit a window of {window} tokens")
    prompt_len = max(len(p) for p in prompts)
    eos = tokenizer.eos_token_id
    ids = torch.full((len(examples), prompt_len + window), eos, dtype=torch.long)
    attention = torch.ones_like(ids, dtype=torch.bool)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        pad = prompt_len - len(prompt)
        ids[i, pad:prompt_len] = torch.tensor(prompt)
        ids[i, prompt_len : prompt_len + len(answer)] = torch.tensor(answer)
        attention[i, :pad] = False
    answer_region = torch.zeros_like(attention)
    answer_region[:, prompt_len:] = True
    return {"input_ids": ids, "attention_mask": attention, "answer_region": answer_region}


class PretrainStream(IterableDataset):
    """Endless batches from a task's training stream, each with a window length drawn from ``windows``
    (0 = tight, see :func:`training_batch`)."""

    def __init__(self, task, tokenizer, batch_size: int, windows: Sequence[int], window_weights: Sequence[float],
                 seed: int) -> None:
        self.task, self.tokenizer, self.batch_size = task, tokenizer, batch_size
        self.windows, self.window_weights, self.seed = list(windows), list(window_weights), seed

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        offset = self.seed * 1000 + (worker.id if worker else 0)
        examples, rng = self.task.stream("train", seed_offset=offset), random.Random(offset)
        while True:
            window = rng.choices(self.windows, weights=self.window_weights)[0]
            yield training_batch(self.tokenizer, [next(examples) for _ in range(self.batch_size)], window)
