"""Tasks: prompt sets with reference answers and scorers, built from the ``task`` config group."""

from pipeline.tasks.arith import ChainedAddition
from pipeline.tasks.base import SPLITS, Example, Score, Task

__all__ = ["SPLITS", "ChainedAddition", "Example", "Score", "Task"]
