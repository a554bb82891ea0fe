"""Chained addition written out step by step: the embedded model's synthetic reasoning task.

Prompt ``37+15+8=``; answer ``37+15=52,52+8=60#60``. Each step's sum (with carries) depends on the previous
step's result, so answer tokens depend on each other and over-eager parallel decoding gets them wrong, while the
copied operands are easy. With 2 to 6 terms the answer spans about 7 to 60 characters, so end-of-text padding
fills most of a long window. Splits are disjoint by construction: a prompt's split is a hash bucket of its text.
"""

from __future__ import annotations

import random
import zlib

from pipeline.tasks.base import Example, Task, check_split

BUCKETS = {"test": (0,), "validation": (1,), "train": tuple(range(2, 20))}


class ChainedAddition(Task):
    name = "arith"

    def __init__(self, min_terms: int = 2, max_terms: int = 6, max_operand: int = 99, seed: int = 0) -> None:
        if not 2 <= min_terms <= max_terms:
            raise ValueError(f"task.min_terms={min_terms} and task.max_terms={max_terms}: need 2 <= min <= max")
        if max_operand < 1:
            raise ValueError(f"task.max_operand={max_operand}: must be >= 1")
        self.min_terms, self.max_terms, self.max_operand, self.seed = min_terms, max_terms, max_operand, seed

    @staticmethod
    def solve(terms: list[int]) -> tuple[str, str]:
        steps, total = [], terms[0]
        for term in terms[1:]:
            steps.append(f"{total}+{term}={total + term}")
            total += term
        return ",".join(steps) + f"#{total}", str(total)

    def sample(self, rng: random.Random) -> Example:
        terms = [rng.randint(1, self.max_operand) for _ in range(rng.randint(self.min_terms, self.max_terms))]
        answer, final = self.solve(terms)
        return Example(prompt="+".join(map(str, terms)) + "=", answer=answer, final=final)

    def stream(self, split: str, seed_offset: int = 0):
        """An endless seeded stream of examples from one split (pretraining reads this)."""
        check_split(split)
        rng = random.Random(f"{self.seed}:{split}:{seed_offset}")
        while True:
            example = self.sample(rng)
            if zlib.crc32(example.prompt.encode()) % 20 in BUCKETS[split]:
                yield example

    def examples(self, split: str, n: int) -> list[Example]:
        stream = self.stream(split)
        return [next(stream) for _ in range(n)]

    def extract_final(self, text: str) -> str | None:
        if "#" not in text:
            return None
        return text.rsplit("#", 1)[1].strip() or None
