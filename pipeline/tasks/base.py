"""What every task provides: seeded prompt splits with reference answers, and a scorer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from pipeline.errors import ConfigError

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
    """A prompt set with reference answers and a scorer.

    Constructors are cheap (no data loading) and modules import neither torch nor datasets at import time, so a
    config can be validated in a second; data is loaded lazily by :meth:`examples` and :meth:`split_size`.
    """

    name: str
    stop_strings: tuple[str, ...] = ()  # generated text is cut at the first of these before scoring
    chat_template: bool = False  # prompts go through the model's chat template (set by ``task.chat_template``)
    sizes_are_cheap: bool = False  # split_size needs no data loading, so validation checks prompt counts up front

    def check(self) -> None:
        """Cheap check that the task's data can be found; raises ConfigError or InputError naming the fix."""
        return None

    def cut(self, generated: str) -> str:
        """The generated text up to the first stop string."""
        for stop in self.stop_strings:
            generated = generated.split(stop, 1)[0]
        return generated

    @abstractmethod
    def examples(self, split: str, n: int) -> list[Example]:
        """The first ``n`` examples of ``split``; the same every call (seeded)."""

    @abstractmethod
    def split_size(self, split: str) -> int:
        """How many distinct prompts ``split`` holds."""

    def check_count(self, split: str, n: int) -> None:
        """Asking for no prompts, or more than a split holds, is a setting error (it would never finish)."""
        available = self.split_size(split)
        if not 1 <= n <= available:
            raise ConfigError("num_prompts", n, f"allowed: 1 to {available} (the distinct prompts of the {split} "
                                                "split)")

    @abstractmethod
    def extract_final(self, text: str) -> str | None:
        """The final answer written in a generated text, or None when there is none."""

    def score(self, example: Example, generated: str) -> Score:
        generated = self.cut(generated)
        return Score(
            exact_match=self.extract_final(generated) == example.final,
            full_match=generated.strip() == example.answer,
        )


    def score_many(self, examples: list[Example], generated_texts: list[str]) -> list[Score]:
        """Scores for many texts at once (code tasks run their programs in parallel)."""
        return [self.score(example, text) for example, text in zip(examples, generated_texts)]


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError("split", split, f"allowed: {', '.join(SPLITS)}")
