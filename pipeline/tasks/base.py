"""What every task provides: seeded prompt splits with reference answers, and a scorer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the full reference text the model should generate (without end-of-text)
    final: str  # the final answer that exact match compares


@dataclass(frozen=True)
class Score:
    exact_match: bool  # final answer correct
    full_match: bool  # whole generated text equals the reference


class Task(ABC):
    name: str

    @abstractmethod
    def examples(self, split: str, n: int) -> list[Example]:
        """The first ``n`` examples of ``split``; the same every call (seeded)."""

    @abstractmethod
    def extract_final(self, text: str) -> str | None:
        """The final answer written in a generated text, or None when there is none."""

    def score(self, example: Example, generated: str) -> Score:
        return Score(
            exact_match=self.extract_final(generated) == example.final,
            full_match=generated.strip() == example.answer,
        )


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
