"""Stage ``all`` (the default): trajectories -> train_filter [-> train_policy] -> sweep -> aggregate, each reused
when complete (train_policy only when the grid decodes with the experiment's own ``rl_filter``).

Every stage's settings were validated before this runs (:mod:`pipeline.validation`), so a typo in the sweep grid
fails in a second rather than after trajectory generation.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pipeline.artifacts import Artifact
from pipeline.plan import is_multirun, sweep_settings, trains_policy
from pipeline.stages import aggregate, sweep, train_filter, train_policy, trajectories
from pipeline.stages.common import StageContext


def run(cfg: DictConfig) -> Artifact:
    ctx = StageContext(cfg)  # one model load for the whole pipeline
    trajectories.run(cfg, ctx)
    train_filter.run(cfg, ctx)
    if trains_policy(sweep_settings(cfg, is_multirun())):
        train_policy.run(cfg, ctx)
    sweep.run(cfg, ctx)
    return aggregate.run(cfg, ctx)
