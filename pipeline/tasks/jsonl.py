"""A user's own prompts and reference answers in JSON-lines files.

``task.path`` is one ``.jsonl`` file used for every split (so train and test prompts are the same: fine for
measuring decoding speed, not for held-out accuracy) or a directory holding ``train.jsonl``, ``validation.jsonl`` and
``test.jsonl`` (only the splits a run reads need to exist). Each line is an object with a prompt and an answer field.

Exact match compares the last non-empty line of the generated text (stripped) with the final answer: the
``final_field`` when set, else the last non-empty line of the answer, which is the whole answer stripped when it is
one line. So a multi-line answer should end with its final answer on a line of its own.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from models.errors import ConfigError, InputError
from pipeline.tasks.base import Example, Task, check_split
from pipeline.tasks.hub import json_lines

FIX = ("give task.path a .jsonl file with one JSON object per line, or a directory with train.jsonl, "
       "validation.jsonl and test.jsonl")


def last_line(text: str) -> str | None:
    """The last non-empty line, stripped; None when there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


class JsonlTask(Task):
    name = "jsonl"
    sizes_are_cheap = True  # a local file read once: an empty or short file is refused before the run starts

    def __init__(self, path: str | None, prompt_field: str = "prompt", answer_field: str = "answer",
                 final_field: str | None = None, stop_strings: tuple[str, ...] = ()) -> None:
        """``path`` is required; None (the YAML's ``null``) is refused with what to give."""
        if not path:
            raise ConfigError("task.path", path, "allowed: a .jsonl file, or a directory with train.jsonl, "
                                                 "validation.jsonl and test.jsonl")
        for setting, field in (("task.prompt_field", prompt_field), ("task.answer_field", answer_field),
                               ("task.final_field", final_field)):
            if field is not None and not (isinstance(field, str) and field):
                raise ConfigError(setting, field, "allowed: the name of a field of every line's object")
        if any(not isinstance(stop, str) or not stop for stop in stop_strings):
            raise ConfigError("task.stop_strings", list(stop_strings), "allowed: non-empty strings")
        self.path, self.prompt_field, self.answer_field = path, prompt_field, answer_field
        self.final_field = final_field
        self.stop_strings = tuple(stop_strings)

    def check(self) -> None:
        path = Path(self.path)
        if not path.exists():
            raise InputError(path, "does not exist", FIX)
        if path.is_dir() and not any((path / f"{split}.jsonl").is_file() for split in ("train", "validation", "test")):
            raise InputError(path, "holds none of train.jsonl, validation.jsonl, test.jsonl", FIX)

    def file(self, split: str) -> Path:
        """The file that holds ``split``."""
        check_split(split)
        path = Path(self.path)
        file = path / f"{split}.jsonl" if path.is_dir() else path
        if not file.is_file():
            raise InputError(file, "does not exist", FIX)
        return file

    @functools.cache  # noqa: B019 - a handful of small task objects per process
    def split_examples(self, split: str) -> list[Example]:
        file = self.file(split)
        examples = [self.example(file, number, row) for number, row in json_lines(file, FIX)]
        if not examples:
            raise InputError(file, f"holds no examples (the {split} split is read from it)", FIX)
        return examples

    def example(self, file: Path, number: int, row: dict[str, Any]) -> Example:
        fields = [self.prompt_field, self.answer_field] + ([self.final_field] if self.final_field else [])
        missing = [field for field in fields if field not in row]
        if missing:
            raise InputError(file, f"line {number} has no field {', '.join(map(repr, missing))} "
                                   f"(fields: {', '.join(row)})", FIX)
        prompt = row[self.prompt_field]
        if not isinstance(prompt, str):
            raise InputError(file, f"line {number}: field {self.prompt_field!r} is not a string", FIX)
        answer = str(row[self.answer_field]).strip()
        final = str(row[self.final_field]).strip() if self.final_field else last_line(answer) or ""
        return Example(prompt=prompt, answer=answer, final=final, source=f"{file}:{number}")

    def split_size(self, split: str) -> int:
        return len(self.split_examples(split))

    def examples(self, split: str, n: int) -> list[Example]:
        """The first ``n`` lines of the split's file, in file order."""
        self.check_count(split, n)
        return self.split_examples(split)[:n]

    def extract_final(self, text: str) -> str | None:
        return last_line(text)
