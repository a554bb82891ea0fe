"""Building a task from the ``task`` config group."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.tasks.arith import ChainedAddition
from pipeline.tasks.base import Task

TASKS: dict[str, type[Task]] = {ChainedAddition.name: ChainedAddition}


def build_task(cfg: DictConfig) -> Task:
    settings = OmegaConf.to_container(cfg, resolve=True)
    name = settings.pop("name")
    if name not in TASKS:
        raise ConfigError("task.name", name, f"allowed: {', '.join(TASKS)}")
    return TASKS[name](**settings)
