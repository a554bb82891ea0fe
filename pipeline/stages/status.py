"""Stage ``status``: each stage's artifact state for the experiment, and the Slurm states of the jobs its last
``launcher=slurm`` submission started (failed ones with their log and error line)."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.cluster import status


def run(cfg: DictConfig) -> dict:
    return status(cfg)
