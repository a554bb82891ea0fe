"""Stage ``all`` (the default): trajectories -> train_filter -> sweep -> aggregate, each reused when complete.

Every stage's settings were validated before this runs (:mod:`pipeline.validation`), so a typo in the sweep grid
fails in a second rather than after trajectory generation.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.artifacts import Artifact
from pipeline.stages import aggregate, sweep, train_filter, trajectories
from pipeline.stages.common import StageContext


def run(cfg: DictConfig) -> Artifact:
    ctx = StageContext(cfg)  # one model load for the whole pipeline
    trajectories.run(cfg, ctx)
    train_filter.run(cfg, ctx)
    sweep.run(cfg, ctx)
    return aggregate.run(cfg, ctx)
