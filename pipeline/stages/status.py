"""Stage ``status``: each stage's artifact state for the experiment, and the Slurm states of the jobs its last
``launcher=slurm`` submission started (failed ones with their log and error line). It writes nothing, not even a
run folder (:mod:`pipeline.cli`), and a damaged artifact of any stage is shown as such and named in one error line
(exit status 2), never recomputed."""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.cluster import status


def run(cfg: DictConfig) -> dict:
    return status(cfg)
