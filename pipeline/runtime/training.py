"""The Lightning pieces every training stage shares: progress lines where no bar can show it, the history and
the seconds a resumed run keeps, a stop at the first non-finite loss or gradient, and the clean state a preempted
job saves. Imported by the code that trains only (Lightning's import alone takes seconds).

A bar redrawn in place reads well on a terminal and not at all in a cluster job's log file (one long line, or
nothing), so training draws Lightning's bar only when ``progress=true`` and stderr is a terminal, and otherwise
logs a line every few percent of its epochs (:class:`EpochLog`). A run resumed from a checkpoint keeps the metric
history (:func:`history_logger`) and the training seconds (:class:`TrainingClock`) of the runs before it, and
training that diverges stops with one line naming the settings to lower (:class:`FiniteTraining`).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from models.errors import format_value
from pipeline.runtime.progress import HISTORY, STEP_ROW, TrainingDiverged, duration, number, read_history

log = logging.getLogger(__name__)


class EpochLog(L.Callback):
    """Logs ``<name>: epoch n/N (p%), train loss, val loss, elapsed, ETA`` ``lines`` times a run (every 5% by
    default; every epoch when there are fewer), and after the last epoch when early stopping ends training."""

    def __init__(self, name: str, max_epochs: int, lines: int = 20, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.name, self.max_epochs, self.clock = name, max_epochs, clock
        self.marks = {-(-k * max_epochs // lines) for k in range(1, lines + 1)}  # integer ceilings: no float drift
        self.started, self.first_epoch, self.logged = 0.0, 0, 0
        self.val_loss: tuple[int, float] | None = None  # (epoch, loss) of the latest validation

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started, self.first_epoch = self.clock(), trainer.current_epoch  # a resumed run starts later

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and loss is not None:
            self.val_loss = (trainer.current_epoch + 1, float(loss))

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch in self.marks:
            self.report(trainer, epoch)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch  # counts the epochs completed once training has ended
        if epoch != self.logged:
            self.report(trainer, epoch, ending="stopped early" if epoch < self.max_epochs else "")

    def report(self, trainer: L.Trainer, epoch: int, ending: str = "") -> None:
        """One line on the first ``epoch`` epochs; ``ending`` says why training ended there, if it did early."""
        elapsed = self.clock() - self.started
        done = epoch - self.first_epoch
        parts = [f"epoch {epoch}/{self.max_epochs} ({100 * epoch / self.max_epochs:.0f}%)"]
        train_loss = trainer.callback_metrics.get("train/loss")
        if train_loss is not None:
            parts.append(f"train loss {float(train_loss):.4f}")
        if self.val_loss is not None:
            seen, loss = self.val_loss
            parts.append(f"val loss {loss:.4f}" + ("" if seen == epoch else f" (epoch {seen})"))
        parts.append(f"{duration(elapsed)} elapsed")
        if ending:
            parts.append(ending)
        elif epoch < self.max_epochs and done > 0:
            parts.append(f"ETA {duration(elapsed / done * (self.max_epochs - epoch))}")
        log.info("%s: %s", self.name, ", ".join(parts))
        self.logged = epoch


class FiniteTraining(L.Callback):
    """Stops training at the first non-finite loss or gradient, before the optimiser step, so no checkpoint ever
    holds weights the divergence spoiled; the error names ``lower``, the settings (name -> value) to lower.

    ``unit`` is what the user counts: ``epoch`` (numbered from 1) or a step (``update``, ``step``: the global step,
    numbered from 1)."""

    def __init__(self, stage: str, unit: str, lower: dict[str, Any]) -> None:
        self.stage, self.unit, self.lower = stage, unit, lower
        self.first = 0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.first = trainer.global_step

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()):
            raise self.diverged(trainer, f"the loss is {float(loss.detach())}")

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        grads = [torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None]
        if grads and not torch.stack(grads).all():  # one device sync, not one per tensor
            raise self.diverged(trainer, "a gradient is not finite")

    def diverged(self, trainer: L.Trainer, what: str) -> TrainingDiverged:
        where = trainer.current_epoch + 1 if self.unit == "epoch" else trainer.global_step + 1
        settings = " or ".join(f"{name}={format_value(value)}" for name, value in self.lower.items())
        return TrainingDiverged(f"{self.stage}: {what} at {self.unit} {where} (training diverged); lower {settings}",
                                trainer.global_step, self.first)


class TrainingClock(L.Callback):
    """The seconds spent in training steps, over every run that led to the last checkpoint: the sum is saved with
    the checkpoint, so a resumed run adds its steps to those of the steps it resumes after (the steps a killed run
    took after its last checkpoint are taken again and counted once). Validation is not counted."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock, self.seconds, self.began = clock, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        self.began = self.clock()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.seconds += self.clock() - self.began

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.seconds = float(state_dict["seconds"])


class StepRow(L.Callback):
    """The training row of the step a checkpoint was written after, saved inside it. Lightning writes a step's
    metrics only after the callbacks that save its checkpoint, so a kill in between would leave the resumed
    history without that step; the resume writes it from here (:func:`history_logger`). One row: the per-step
    snapshot a preemptible job takes stays as cheap as before."""

    def __init__(self, prefix: str = "train/") -> None:
        self.prefix = prefix

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        metrics = {k: float(v) for k, v in trainer.logged_metrics.items() if k.startswith(self.prefix)}
        checkpoint[STEP_ROW] = {"epoch": str(trainer.current_epoch), "step": str(trainer.global_step - 1),
                                **{k: repr(v) for k, v in metrics.items()}} if metrics else None


def history_logger(folder: Path, resumed_at: int, kept: dict[str, str] | None = None
                   ) -> L.pytorch.loggers.CSVLogger:
    """Lightning's CSV logger in ``folder/logs/version_0``, keeping what earlier runs logged before global step
    ``resumed_at`` (Lightning's writer starts its file anew; the rows from that step on were logged after the
    checkpoint a resumed run starts from, and it logs them again), so the history holds every step once. ``kept``
    is the checkpoint's own row of its last step (:class:`StepRow`), written where a kill left it out."""
    logger = L.pytorch.loggers.CSVLogger(folder, name="logs", version=0)
    path = Path(logger.log_dir) / HISTORY
    earlier = [row for row in read_history(path) if int(row["step"]) < resumed_at]
    if kept is not None and int(kept["step"]) < resumed_at and not any(
            row["step"] == kept["step"] and any(row.get(k) for k in kept if k not in ("epoch", "step"))
            for row in earlier):
        earlier.append(kept)
    writer = logger.experiment  # made now: it deletes the earlier file
    for row in earlier:
        writer.log_metrics({k: number(v) for k, v in row.items() if k != "step" and v}, int(row["step"]))
    writer.save()
    return logger


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


def interruptible_fit(trainer: L.Trainer, *args, **kwargs) -> None:
    """``trainer.fit``, with Ctrl-C kept a ``KeyboardInterrupt``: Lightning shuts down on it and then exits with
    status 1, which would read as a crash; the command line reports an interrupt as such (status 130)."""
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit as exit:
        if trainer.interrupted:
            raise KeyboardInterrupt from exit
        raise
