"""What a cluster job saves when Slurm is about to stop it (preemption or its time limit).

The submitit job wrapper (:mod:`pipeline.execution.slurm`) owns the signal: on it, it calls :func:`save_all` and
requeues itself. A stage that holds unsaved progress registers a saver for as long as it runs; filter training registers
one that writes the state of its last finished epoch as the Lightning checkpoint it resumes from (policy
training: of its last finished update; :class:`pipeline.runtime.training.EpochSnapshot`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

_savers: list[Callable[[], None]] = []


@contextlib.contextmanager
def saver(save: Callable[[], None]) -> Iterator[None]:
    """Run ``save`` if the job is stopped while this block runs."""
    _savers.append(save)
    try:
        yield
    finally:
        _savers.remove(save)


def save_all() -> None:
    for save in list(_savers):
        save()


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ
