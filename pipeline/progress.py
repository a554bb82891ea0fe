"""Training progress where a progress bar cannot show it: log lines, a few per run, for log files.

A bar redrawn in place reads well on a terminal and not at all in a cluster job's log file (one long line, or
nothing), so training draws Lightning's bar only when ``progress=true`` and stderr is a terminal, and otherwise
logs a line every few percent of its epochs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import lightning as L

log = logging.getLogger(__name__)


def bar_wanted(progress: bool) -> bool:
    """Whether to draw a progress bar: asked for, and stderr is a terminal that redraws it in place."""
    return progress and sys.stderr.isatty()


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``: precise enough to plan by."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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
