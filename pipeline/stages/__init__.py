"""Stages: each a module with ``run(cfg)``; ``stage=NAME`` picks one. The config is validated before this."""

from __future__ import annotations

import importlib
import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run_stage(cfg: DictConfig) -> object:
    import torch

    from pipeline.progress import bar_wanted

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if not bar_wanted(bool(cfg.progress)):  # the libraries' own bars too (loading weights, saving datasets)
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    if cfg.launcher.kind == "slurm" and cfg.stage != "status":
        from pipeline.cluster import submit

        return submit(cfg)
    module = importlib.import_module(f"pipeline.stages.{cfg.stage}")
    return module.run(cfg)
