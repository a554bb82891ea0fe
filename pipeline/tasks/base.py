"""What every task provides: seeded prompt splits with reference answers, and a scorer."""

from __future__ import annotations

import random
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from models.errors import ConfigError

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str  # the full reference text the model should generate (without end-of-text)
    final: str  # the final answer that exact match compares
    source: str | None = field(default=None, compare=False)  # where a user's example came from (file:line)


@dataclass(frozen=True)
class Score:
    exact_match: bool  # final answer correct
    full_match: bool  # whole generated text equals the reference
    metrics: dict[str, float] = field(default_factory=dict)  # a scorer's own further metrics (lm-eval's, by filter)


class Task(ABC):
    """A prompt set with reference answers and a scorer.

    Constructors are cheap (no data loading) and modules import neither torch nor datasets at import time, so a
    config can be validated in a second; data is loaded lazily by :meth:`examples` and :meth:`split_size`.
    """

    name: str
    stop_strings: tuple[str, ...] = ()  # generated text is cut at the first of these before scoring
    chat_template: bool = False  # prompts go through the model's chat template (set by ``task.chat_template``)
    sizes_are_cheap: bool = False  # split_size needs no data loading, so validation checks prompt counts up front

    @property
    def label(self) -> str:
        """How the task is named to a reader."""
        return self.name

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


class SampledTask(Task):
    """A synthetic task drawn from a seeded generator: a prompt's split is a hash bucket of its text, so splits
    are disjoint by construction, and ``n`` distinct prompts of a split are the first ``n`` its stream yields."""

    BUCKETS = {"test": (0,), "validation": (1,), "train": tuple(range(2, 20))}
    sizes_are_cheap = True
    seed: int = 0
    stream_prefix: str = ""  # namespaces the generator's seed per task

    @abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """One example drawn with ``rng``, from any split."""

    def in_split(self, prompt: str, split: str) -> bool:
        return zlib.crc32(prompt.encode()) % 20 in self.BUCKETS[split]

    def stream(self, split: str, seed_offset: int = 0) -> Iterator[Example]:
        """An endless seeded stream of examples from one split (pretraining reads this)."""
        check_split(split)
        rng = random.Random(f"{self.stream_prefix}{self.seed}:{split}:{seed_offset}")
        while True:
            example = self.sample(rng)
            if self.in_split(example.prompt, split):
                yield example

    def examples(self, split: str, n: int) -> list[Example]:
        """``n`` distinct prompts of ``split`` (the stream itself may repeat a prompt)."""
        self.check_count(split, n)
        seen: dict[str, Example] = {}
        for example in self.stream(split):
            seen.setdefault(example.prompt, example)
            if len(seen) == n:
                return list(seen.values())
        raise AssertionError("unreachable: the stream is endless")
