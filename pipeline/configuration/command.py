"""What a command will do, known from its config alone (torch-free): the stages it runs and the decode
settings its sweep evaluates. Validation, the stages and key planning all read this one plan."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models.errors import ConfigError, first_line
from pipeline.decoding.settings import DecodeSettings

STAGES = ("all", "trajectories", "train_filter", "train_policy", "sweep", "aggregate", "evaluate", "score_references",
          "pretrain", "benchmark", "status")
UPSTREAM = {"trajectories": (), "train_filter": ("trajectories",), "train_policy": ("train_filter",),
            "sweep": ("train_policy", "train_filter"),
            "aggregate": ("sweep",), "evaluate": (), "score_references": (), "pretrain": (),
            "benchmark": ("train_policy", "train_filter"), "status": ()}


def is_multirun() -> bool:
    """Inside a Hydra multirun job (each job evaluates its own ``decode`` setting)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def decode_settings(cfg: DictConfig) -> DecodeSettings:
    """The user's ``decode`` choice as the typed object (interpolations resolved)."""
    return OmegaConf.to_object(cfg.decode)


GRIDS: dict[str, list[DecodeSettings]] = {}  # expand_grid's expansions in this process, by decode and sweep


def expand_grid(cfg: DictConfig) -> list[DecodeSettings]:
    """Every grid entry over every ``sweep.gen_lengths``, list-valued fields multiplied out, each merged onto the
    user's ``decode`` and type-checked as a :class:`DecodeSettings`. Steps are one per token unless
    ``sweep.steps_per_block`` fixes them per block (a fixed NFE for every gen length).

    Expanded once per process for each ``decode`` and ``sweep`` (resolved): validation, planning and the stages
    each ask, and type-checking a grid of a few dozen settings takes a few hundred milliseconds."""
    try:
        key = repr([OmegaConf.to_container(cfg[name], resolve=True) for name in ("decode", "sweep")])
    except OmegaConfBaseException:  # an interpolation that does not resolve: the expansion names it
        return expanded(cfg)
    if key not in GRIDS:
        GRIDS[key] = expanded(cfg)
    return copy.deepcopy(GRIDS[key])  # a caller may change its settings


def expanded(cfg: DictConfig) -> list[DecodeSettings]:
    """:func:`expand_grid`'s work, uncached."""
    base = OmegaConf.structured(decode_settings(cfg))
    settings = []
    for index, node in enumerate(cfg.sweep.grid):
        entry = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}
        lists = {k: v for k, v in entry.items() if isinstance(v, list)}
        for gen_length in cfg.sweep.gen_lengths:
            for values in itertools.product(*lists.values()):
                per_block = cfg.sweep.steps_per_block
                changes = {**entry, **dict(zip(lists, values)), "gen_length": gen_length,
                           "block_length": cfg.sweep.block_length,
                           "steps": None if per_block is None else gen_length // cfg.sweep.block_length * per_block}
                settings.append(typed(base, changes, f"sweep.grid[{index}]").validate(f"sweep.grid[{index}]"))
    return settings


def typed(base: Any, changes: dict[str, Any], where: str) -> DecodeSettings:
    """``base`` with ``changes`` merged in by OmegaConf, so each value is checked against the schema's type."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, changes))
    except OmegaConfBaseException as error:
        key = getattr(error, "key", None) or "?"
        raise ConfigError(f"{where}.{key}", changes.get(str(key)), first_line(error)) from error


def sweep_settings(cfg: DictConfig, multirun: bool) -> list[DecodeSettings]:
    """A multirun job evaluates its own ``decode`` setting; a single run the experiment's grid."""
    return [decode_settings(cfg).validate()] if multirun else expand_grid(cfg)


def trains_policy(settings: list[DecodeSettings]) -> bool:
    """Whether the sweep needs this experiment's own reinforcement-tuned policy (``rl_filter`` without a path)."""
    return any(s.policy == "rl_filter" and not s.filter_path for s in settings)


def trains_filter(settings: list[DecodeSettings]) -> bool:
    """Whether the sweep needs this experiment's own filter: a filter setting without a ``filter_path``, or the
    policy fine-tuned from it."""
    return any(s.policy == "filter" and not s.filter_path for s in settings) or trains_policy(settings)


def stages_to_run(cfg: DictConfig, multirun: bool) -> list[str]:
    """The stages a command runs, upstream first; a sweep needs the filter stages only when it trains one, and
    the policy stage only when it decodes with the experiment's own ``rl_filter``."""
    if cfg.stage == "all":
        policy = ["train_policy"] if trains_policy(sweep_settings(cfg, multirun)) else []
        return ["trajectories", "train_filter", *policy, "sweep", "aggregate"]
    wanted, order = {cfg.stage}, []
    for stage in ("aggregate", "benchmark", "sweep", "train_policy", "train_filter", "trajectories", "evaluate",
                  "score_references", "pretrain"):
        if stage not in wanted:
            continue
        order.insert(0, stage)
        upstream = set(UPSTREAM[stage])
        if stage in ("sweep", "benchmark"):
            settings = sweep_settings(cfg, multirun)
            upstream = {"train_filter"} if trains_filter(settings) else set()
            upstream |= {"train_policy"} if trains_policy(settings) else set()
        wanted |= upstream
    return order
