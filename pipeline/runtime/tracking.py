"""Experiment tracking: one W&B run per stage execution, or nothing with ``logger=none``.

W&B runs offline by default (no network needed; ``wandb sync`` uploads later). Runs are grouped by experiment,
``job_type`` is the stage and the run name carries the artifact key, so a dashboard lines up with ``outputs/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class Tracker:
    """What stages log through; the no-op base is ``logger=none``."""

    run: Any = None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        return None

    def log_image(self, name: str, path: Path) -> None:
        return None

    def log_scatter(self, name: str, rows: list[dict[str, Any]], x: str, y: str, title: str) -> None:
        return None

    def summary(self, values: dict[str, Any]) -> None:
        return None


class WandbTracker(Tracker):
    def __init__(self, run) -> None:
        self.run = run

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import wandb

        columns = list(rows[0]) if rows else []
        self.run.log({name: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})

    def log_image(self, name: str, path: Path) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path))})

    def log_scatter(self, name: str, rows: list[dict[str, Any]], x: str, y: str, title: str) -> None:
        import wandb

        table = wandb.Table(columns=[x, y, "label"], data=[[r[x], r[y], r["label"]] for r in rows])
        self.run.log({name: wandb.plot.scatter(table, x, y, title=title)})

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)


@contextlib.contextmanager
def tracking(cfg: DictConfig, stage: str, key: str, config: dict[str, Any] | None = None) -> Iterator[Tracker]:
    """Open a run for one stage execution and always finish it, even when the stage fails."""
    if cfg.logger.kind == "none":
        yield Tracker()
        return
    import wandb

    directory = Path(cfg.logger.dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=cfg.logger.project, group=cfg.experiment_name, job_type=stage, name=f"{stage}-{key}",
        mode=cfg.logger.mode, dir=str(directory), config=config or OmegaConf.to_container(cfg, resolve=True),
        reinit="create_new", settings=wandb.Settings(console="off", x_disable_stats=True),
    )
    failed = True
    try:
        yield WandbTracker(run)
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)
        log.info("W&B %s run %s written under %s", cfg.logger.mode, run.id, directory)
