"""What a cluster job saves when Slurm is about to stop it (preemption or its time limit).

The submitit job wrapper (:mod:`pipeline.execution.slurm`) owns the signal: on it, it calls :func:`save_all` and
requeues itself. A stage that holds unsaved progress registers a saver for as long as it runs; filter training registers
one that writes the state of its last finished epoch as the Lightning checkpoint it resumes from (policy
training: of its last finished update).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)
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


class EpochSnapshot(L.Callback):
    """Keeps, in memory, the checkpoint Lightning would write at the end of the last finished epoch, so a
    preempted run saves a clean state (never one taken halfway through an optimiser step) and a resumed run
    replays exactly the epochs the uninterrupted one would have run."""

    def __init__(self, path: Path) -> None:
        self.path, self.state = path, None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.state = copy.deepcopy(trainer._checkpoint_connector.dump_checkpoint(weights_only=False))

    def save(self) -> None:
        if self.state is None:
            log.warning("preempted before the first epoch ended: nothing to save")
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.state, tmp)
        os.replace(tmp, self.path)
        log.info("preempted: saved the state after epoch %d to %s", self.state["epoch"], self.path)


class UpdateSnapshot(EpochSnapshot):
    """:class:`EpochSnapshot` for training of one long epoch (policy updates): the state after the last finished
    update."""

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        return None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.state = copy.deepcopy(trainer._checkpoint_connector.dump_checkpoint(weights_only=False))


def fit(trainer: L.Trainer, *args, **kwargs) -> None:
    """``trainer.fit``, with Ctrl-C kept a ``KeyboardInterrupt``: Lightning shuts down on it and then exits with
    status 1, which would read as a crash; the command line reports an interrupt as such (status 130)."""
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit as exit:
        if trainer.interrupted:
            raise KeyboardInterrupt from exit
        raise
