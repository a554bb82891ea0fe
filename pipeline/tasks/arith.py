"""Repeated addition written out step by step: the embedded model's synthetic reasoning task.

Prompt ``037+15*3=`` (start at 37, add 15 three times); answer
``3:037+15=052,2:052+15=067,1:067+15=082#082``. Each step's sum (with carries) depends on the previous step's
result, so answer tokens depend on each other and over-eager parallel decoding gets them wrong, while the copied
operands are easy. With 1 to 4 steps the answer spans 16 to 55 characters, so end-of-text padding fills most of a
long window. Splits are disjoint by construction: a prompt's split is a hash bucket of its text.

Each line starts with the number of additions still to do, so the decision to stop is local (the line after
``1:`` is the final answer). Without that countdown the model had to tell the line index from the position alone:
a 1.3M-parameter model trained 4,400 steps summed single lines correctly but mostly ran past the requested count
(25% exact match, 2% at three steps).

Numbers are zero-padded to fixed widths (totals 3 digits, the step 2) so that digits of equal place line up at
fixed offsets: with free-width numbers a 1.3M-parameter model learned to copy operands but not to add them
within 2,000 steps. An earlier variant summing distinct terms (``37+15+8=``) also failed to learn to find the
k-th term.
"""

from __future__ import annotations

import functools
import random

from models.errors import ConfigError
from pipeline.tasks.base import Example, SampledTask, check_split


class ChainedAddition(SampledTask):
    name = "arith"

    def __init__(self, min_steps: int = 1, max_steps: int = 4, max_operand: int = 99, seed: int = 0) -> None:
        if not 1 <= min_steps <= 9:
            raise ConfigError("task.min_steps", min_steps, "allowed: 1 to 9")
        if not min_steps <= max_steps <= 9:
            raise ConfigError("task.max_steps", max_steps, f"allowed: task.min_steps ({min_steps}) to 9")
        if not 1 <= max_operand <= 99:
            raise ConfigError("task.max_operand", max_operand, "allowed: 1 to 99 (two-digit steps, three-digit totals)")
        self.min_steps, self.max_steps, self.max_operand, self.seed = min_steps, max_steps, max_operand, seed

    @staticmethod
    def solve(start: int, step: int, count: int) -> tuple[str, str]:
        lines, total = [], start
        for remaining in range(count, 0, -1):
            lines.append(f"{remaining}:{total:03d}+{step:02d}={total + step:03d}")
            total += step
        return ",".join(lines) + f"#{total:03d}", f"{total:03d}"

    def sample(self, rng: random.Random) -> Example:
        start, step = rng.randint(1, self.max_operand), rng.randint(1, self.max_operand)
        count = rng.randint(self.min_steps, self.max_steps)
        answer, final = self.solve(start, step, count)
        return Example(prompt=f"{start:03d}+{step:02d}*{count}=", answer=answer, final=final)

    @functools.cache  # noqa: B019 - a handful of small task objects per process
    def split_size(self, split: str) -> int:
        check_split(split)
        return sum(
            self.in_split(f"{start:03d}+{step:02d}*{count}=", split)
            for start in range(1, self.max_operand + 1) for step in range(1, self.max_operand + 1)
            for count in range(self.min_steps, self.max_steps + 1)
        )

    def extract_final(self, text: str) -> str | None:
        if "#" not in text:
            return None
        return text.rsplit("#", 1)[1].strip() or None
