"""Building a task from the ``task`` config group, with a typed schema derived from the task's constructor.

Every task's settings are its constructor's parameters (plus ``name`` and ``chat_template``); their type hints
become an OmegaConf structured schema, so a wrong type or an unknown key is refused before any data is read. A new
task is a class here and a YAML file in ``conf/task/``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models.errors import ConfigError
from pipeline.tasks.arith import ChainedAddition
from pipeline.tasks.base import Task
from pipeline.tasks.chain import DigitSumChain
from pipeline.tasks.code import MBPP, HumanEval
from pipeline.tasks.gsm8k import GSM8K
from pipeline.tasks.jsonl import JsonlTask
from pipeline.tasks.lm_eval_task import LmEvalTask
from pipeline.tasks.minerva_math import MATH

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (ChainedAddition, DigitSumChain, GSM8K, MATH, HumanEval, MBPP, JsonlTask, LmEvalTask)
}


def omegaconf_type(hint: Any) -> Any:
    """A type OmegaConf 2.3 understands: ``X | None`` -> ``Optional[X]``, ``list[X]`` -> ``List[X]``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return omegaconf_type(rest[0]) | None if len(rest) == 1 and len(args) == 2 else Any
    if origin in (list, tuple):
        return list[omegaconf_type(args[0]) if args else Any]
    return hint if hint in (int, float, str, bool) else Any


@functools.cache
def schema(cls: type[Task]) -> type:
    """The structured config of a task class: ``name``, ``chat_template`` and its constructor's parameters."""
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple] = [("name", str, dataclasses.field(default=cls.name)),
                           ("chat_template", bool, dataclasses.field(default=False))]
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = parameter.default
        if default is inspect.Parameter.empty:
            spec = dataclasses.field(default="???")
        elif isinstance(default, (list, tuple, dict)):
            spec = dataclasses.field(default_factory=lambda value=default: list(value)
                                     if not isinstance(value, dict) else dict(value))
        else:
            spec = dataclasses.field(default=default)
        fields.append((name, omegaconf_type(hints.get(name, Any)), spec))
    return dataclasses.make_dataclass(f"{cls.__name__}Settings", fields)


def task_settings(cfg: DictConfig, where: str = "task") -> dict[str, Any]:
    """A task node checked against its task's schema: one line naming a bad setting."""
    name = cfg.get("name")
    if name not in TASKS:
        raise ConfigError(f"{where}.name", name, f"allowed: {', '.join(TASKS)}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema(TASKS[name])), cfg)
        return OmegaConf.to_container(typed, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "key", None)
        reason = str(getattr(error, "msg", None) or error).strip().splitlines()[0]
        if "not in" in reason:
            allowed = ", ".join(f.name for f in dataclasses.fields(schema(TASKS[name])))
            raise ConfigError(f"{where}.{key}", cfg.get(str(key)), f"no such setting; allowed: {allowed}") from error
        raise ConfigError(f"{where}.{key}", cfg.get(str(key)) if key else None, reason) from error


def build_task(cfg: DictConfig, where: str = "task") -> Task:
    """The task a ``task`` node (or ``trajectories.task``, named by ``where``) describes."""
    settings = task_settings(cfg, where)
    name, chat_template = settings.pop("name"), settings.pop("chat_template")
    task = TASKS[name](**settings)
    task.chat_template = chat_template
    return task
