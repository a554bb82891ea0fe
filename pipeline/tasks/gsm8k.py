"""GSM8K grade-school math word problems in the lm-evaluation-harness few-shot format.

Followed: lm-evaluation-harness ``gsm8k`` task (``Question: {question}\\nAnswer:`` with the answer after one space,
shots joined by a blank line, shots from the train split; filters ``strict-match`` = the first
``#### (\\-?[0-9\\.\\,]+)`` and ``flexible-extract`` = the last number). Its flexible pattern
``(-?[$0-9.,]{2,})|(-?[0-9]+)`` also matches digit-free runs such as an ellipsis, so here a number needs a digit.

The hub has only train (7,473) and test (1,319) rows, so ``validation`` is the last 500 hub train rows and ``train``
the rest; shots always come from ``train``, so validation and test prompts never show their own split.
"""

from __future__ import annotations

import functools
import random
import re

from models.errors import ConfigError, InputError
from pipeline.tasks.base import Example, Task, check_split
from pipeline.tasks.hub import check_path, download_fix, load_split, require_fields

HUB_NAME, HUB_CONFIG = "openai/gsm8k", "main"
VALIDATION_ROWS = 500
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
NUMBER = re.compile(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?|-?\$?\.[0-9]+")


def normalise_number(text: str) -> str:
    """``$1,000.00`` and ``1000`` compare equal: no commas, dollar signs, trailing period or decimal zeros."""
    number = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if "." in number:
        number = re.sub(r"^(-?)\.", r"\g<1>0.", number.rstrip("0").rstrip("."))
    return number


def strict_answer(text: str) -> str | None:
    """The number after the first ``####``, as the reference solutions end."""
    match = STRICT.search(text)
    return (normalise_number(match.group(1)) or None) if match else None


def flexible_answer(text: str) -> str | None:
    """The last number written anywhere."""
    numbers = NUMBER.findall(text)
    return (normalise_number(numbers[-1]) or None) if numbers else None


class GSM8K(Task):
    name = "gsm8k"
    stop_strings = ("Question:", "</s>", "<|im_end|>", "\n\n\n")

    def __init__(self, path: str | None = None, num_shots: int = 5, seed: int = 1234) -> None:
        if num_shots < 0:
            raise ConfigError("task.num_shots", num_shots, "allowed: 0 or more worked examples before a question")
        self.path, self.num_shots, self.seed = path, num_shots, seed

    def check(self) -> None:
        check_path(self.path, "task.path", HUB_NAME)

    @functools.cache  # noqa: B019 - a handful of small task objects per process
    def rows(self, split: str) -> list[dict[str, str]]:
        """The raw rows of one of this task's splits, in hub order."""
        check_split(split)
        hub_split = "test" if split == "test" else "train"
        rows = load_split(self.path, HUB_NAME, HUB_CONFIG, hub_split, "task.path")
        source = self.path or HUB_NAME
        require_fields(rows, ("question", "answer"), source, download_fix(HUB_NAME, "task.path"))
        if hub_split == "test":
            return rows
        if len(rows) <= VALIDATION_ROWS:
            raise InputError(source, f"its train split holds {len(rows)} rows, but the last {VALIDATION_ROWS} form "
                                     "the validation split and the rest the train split",
                             download_fix(HUB_NAME, "task.path"))
        return rows[-VALIDATION_ROWS:] if split == "validation" else rows[:-VALIDATION_ROWS]

    def split_size(self, split: str) -> int:
        return len(self.rows(split))

    def examples(self, split: str, n: int) -> list[Example]:
        self.check_count(split, n)
        return [self.example(split, index) for index in range(n)]

    def example(self, split: str, index: int) -> Example:
        row = self.rows(split)[index]
        shots = [f"Question: {shot['question']}\nAnswer: {shot['answer']}" for shot in self.shots(split, index)]
        prompt = "\n\n".join([*shots, f"Question: {row['question']}\nAnswer:"])
        final = normalise_number(row["answer"].rsplit("####", 1)[-1])
        return Example(prompt=prompt, answer=row["answer"].strip(), final=final)

    def shots(self, split: str, index: int) -> list[dict[str, str]]:
        """Train rows drawn per example from its own seed, so a prompt never depends on how many were asked for."""
        pool = self.rows("train")
        rng = random.Random(f"{self.seed}:{split}:{index}")
        picks = [i for i in rng.sample(range(len(pool)), min(self.num_shots + 1, len(pool)))
                 if not (split == "train" and i == index)][: self.num_shots]
        if len(picks) < self.num_shots:
            raise ConfigError("task.num_shots", self.num_shots,
                              f"allowed: 0 to {len(pool) - 1} (the train split holds {len(pool)} rows)")
        return [pool[i] for i in picks]

    def extract_final(self, text: str) -> str | None:
        """The strict answer when the text has one, else the last number."""
        return strict_answer(text) or flexible_answer(text)

    def score_both(self, example: Example, generated: str) -> dict[str, bool]:
        """Both harness filters, for reporting beside the exact match."""
        generated = self.cut(generated)
        return {"strict_match": strict_answer(generated) == example.final,
                "flexible_match": flexible_answer(generated) == example.final}
