"""Runs a command in this process: the threads and progress bars it asked for, then its stage (``stage=all``: the
whole pipeline, one model load)."""

from __future__ import annotations

import importlib

from omegaconf import DictConfig


def run(cfg: DictConfig) -> object:
    import torch

    from pipeline.runtime.progress import bar_wanted

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if not bar_wanted(bool(cfg.progress)):  # the libraries' own bars too (loading weights, saving datasets)
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    if cfg.stage == "all":
        return run_all(cfg)
    module = importlib.import_module(f"pipeline.stages.{cfg.stage}")
    return module.run(cfg)


def run_all(cfg: DictConfig) -> object:
    from pipeline.configuration.command import is_multirun, sweep_settings, trains_policy
    from pipeline.stages import aggregate, sweep, train_filter, train_policy, trajectories
    from pipeline.stages.context import StageContext

    ctx = StageContext(cfg)  # one model load for the whole pipeline
    trajectories.run(cfg, ctx)
    train_filter.run(cfg, ctx)
    if trains_policy(sweep_settings(cfg, is_multirun())):
        train_policy.run(cfg, ctx)
    sweep.run(cfg, ctx)
    return aggregate.run(cfg, ctx)
