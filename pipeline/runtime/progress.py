"""Training progress where a progress bar cannot show it, and what training keeps of it across a resume: the
parts a command reads without training (whether to draw a bar, the metric history, the divergence error). The
Lightning callbacks that write them are in :mod:`pipeline.runtime.training`, imported only by code that trains, so
commands that train nothing never pay Lightning's import.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

import torch

from models.errors import UserError

log = logging.getLogger(__name__)
HISTORY = "metrics.csv"  # Lightning's CSV logger's file, in its log folder


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


class TrainingDiverged(UserError):
    """A non-finite loss or gradient: training cannot go on at these settings. ``step`` is the global step it
    happened at and ``first`` the one the run started from (a resumed run's checkpoint)."""

    def __init__(self, message: str, step: int, first: int) -> None:
        super().__init__(message)
        self.step, self.first = step, first


STEP_ROW = "step_row"


def step_row(checkpoint: Path | None) -> dict[str, str] | None:
    """The row a checkpoint keeps (:class:`StepRow`), or None."""
    if checkpoint is None:
        return None
    return torch.load(checkpoint, map_location="cpu", weights_only=False).get(STEP_ROW)


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of a history file; a last line cut short by a kill while it was written is left out."""
    if not path.exists():
        return []
    text = path.read_text()
    whole = text[: text.rfind("\n") + 1]
    return [row for row in csv.DictReader(io.StringIO(whole)) if (row.get("step") or "").isdigit()]


def number(text: str) -> int | float:
    """A CSV cell as Lightning logged it: an integer (the epoch) or a float (written with ``repr``, so exact)."""
    return int(text) if text.lstrip("-").isdigit() else float(text)


def last_logged(folder: Path, prefix: str) -> dict[str, float]:
    """The latest value of every metric named ``prefix...`` in the history of :func:`history_logger`: the same
    figures whether or not the run was resumed, and after a resume that had no steps left to train."""
    latest: dict[str, float] = {}
    for row in read_history(folder / "logs" / "version_0" / HISTORY):
        latest.update({k: float(v) for k, v in row.items() if k.startswith(prefix) and v})
    return latest
