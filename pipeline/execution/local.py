"""The local executor: the command's plan (:mod:`pipeline.execution.plan`) run node by node in this process, with
one model load for all of them. Every node runs, complete or not: a stage reuses what is complete and still
current (and recomputes what its inputs have outdated) in a moment. Under ``reuse_only`` the nodes of stages the
command did not ask for are not run at all: their artifacts are read, and one that is missing is named."""

from __future__ import annotations

import importlib
import itertools

from omegaconf import DictConfig

from pipeline.artifacts.store import Artifact
from pipeline.configuration.command import is_multirun
from pipeline.execution.plan import Node, plan
from pipeline.stages.context import StageContext


def prepare(cfg: DictConfig) -> None:
    """The threads and progress bars the command asked for (the libraries' own bars too)."""
    import torch

    from pipeline.runtime.progress import bar_wanted

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if not bar_wanted(bool(cfg.progress)):
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def run(cfg: DictConfig) -> object:
    """The command's nodes in order; returns what the last one (the stage asked for) returned."""
    prepare(cfg)
    ctx = StageContext(cfg)
    result = None
    for stage, items in steps(plan(ctx, is_multirun())):
        if not ctx.reuse_only(stage):
            result = run_node(ctx, stage, items)
    return result


def steps(nodes: list[Node]) -> list[tuple[str, list[int] | None]]:
    """Consecutive nodes of one stage run as one step (the sweep's rules and learned settings, in grid order)."""
    merged = []
    for stage, group in itertools.groupby(nodes, key=lambda node: node.stage):
        items = [i for node in group for i in node.items or []]
        merged.append((stage, sorted(items) if stage == "sweep" else None))
    return merged


def run_node(ctx: StageContext, stage: str, items: list[int] | None = None) -> object:
    """One stage's ``run`` on ``items`` (None: all of it); what it made is kept for the nodes after it."""
    result = importlib.import_module(f"pipeline.stages.{stage}").run(ctx, items)
    for artifact in result if isinstance(result, list) else [result]:
        if isinstance(artifact, Artifact):
            ctx.made[artifact.key] = artifact
    return result
