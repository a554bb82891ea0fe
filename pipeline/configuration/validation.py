"""One pass over every setting a command will use, before any heavy import or any file is written.

Hydra has already checked types and unknown keys against :mod:`pipeline.configuration.schema`; this checks ranges,
choices, cross-field rules and the inputs a run reads (the model's files, a saved filter, a writable output folder) for
each stage the command runs (:func:`pipeline.configuration.command.stages_to_run`), so a setting a later stage needs
is refused before the first stage writes anything. Every failure is a :class:`ConfigError` naming the setting, its
value and what is allowed, or an :class:`InputError` naming a file and its field (the saved files' rules are
:mod:`models.saved_files`, which the loaders read too). Torch-free by design: a bad setting fails in about a
second.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from models.errors import ConfigError, UserError
from models.files import check_safetensors, read_json_object
from models.saved_files import (
    FEATURES,
    FILTER_FIX,
    MODEL_FIX,
    PLACEHOLDER_CHARACTERS,
    FieldError,
    check_filter_fields,
    check_native_config,
    check_saved_filter,
    checkpoint_tensors,
    compare_tensors,
    largest_size,
    native_tensor_shapes,
    parameter_count,
    weights_problem,
)
from pipeline.configuration.command import STAGES, decode_settings, stages_to_run, sweep_settings
from pipeline.decoding.settings import DecodeSettings, check_probability
from pipeline.learning.trajectories import FILTER_SPLITS, filter_split_of
from pipeline.modeling.files import locate
from pipeline.tasks.base import SPLITS, Task
from pipeline.tasks.lm_eval_files import read_task_file, scan_builtin, task_files
from pipeline.tasks.lm_eval_task import LmEvalTask
from pipeline.tasks.registry import build_task

DEVICE = re.compile(r"^(cpu|auto|cuda|cuda:\d+)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")
FAMILIES = ("embedded", "llada", "dream")  # models/families.py
IMPLEMENTATIONS = ("native", "remote")  # models/checkpoint.py, or the hub's modeling code
LOGGERS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")
TRAJECTORY_POLICIES = ("egp", "vanilla")
POLICY_REWARDS = ("bonus", "cost")  # the reward forms of pipeline.learning.policy.rewards
SPEED_DRAWS = ("uniform", "log_uniform")  # pipeline.learning.policy.SpeedSchedule
LOSS_ON = ("all", "masked")
LAUNCHERS = ("local", "slurm")
VERIFY_MODES = ("content", "size")
# stages that may load the model
MODEL_STAGES = ("trajectories", "train_policy", "sweep", "aggregate", "evaluate", "benchmark")
SEED_RANGE = (0, 2**32 - 1)  # what numpy, Python's random and Lightning's seed_everything all accept


def validate(cfg: DictConfig, multirun: bool = False) -> list[str]:
    """Check everything the command will use; returns the stages it runs, upstream first."""
    if cfg.stage not in STAGES:
        raise ConfigError("stage", cfg.stage, f"allowed: {', '.join(STAGES)}")
    check_numbers(cfg)
    check_common(cfg)
    check_launcher(cfg, multirun)
    stages = stages_to_run(cfg, multirun)
    if set(stages) & set(MODEL_STAGES):  # a Slurm job or a multirun's launcher loads it elsewhere, checked there
        check_model(cfg, here=not multirun and cfg.launcher.kind == "local")
    for stage in stages:
        CHECKS[stage](cfg, multirun)
    return stages


def at_least(cfg: DictConfig, setting: str, minimum: float, kind: str = "an integer") -> None:
    value = OmegaConf.select(cfg, setting)
    if value is None or value < minimum:
        raise ConfigError(setting, value, f"allowed: {kind} >= {minimum:g}")


def one_of(value, setting: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(setting, value, f"allowed: {', '.join(allowed)}")


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted setting, value) of every leaf of a plain config tree; list items as ``name[i]``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, f"{path}[{index}]")
    else:
        yield path, node


def check_numbers(cfg: DictConfig) -> None:
    """The schema-wide rules, whatever the setting: every number is finite (a NaN threshold or temperature would
    decode garbage and write invalid JSON) and every seed is one all the random generators accept. Read unresolved,
    so an interpolated value is named where the user set it (``seed``, not ``decode.seed: ${seed}``)."""
    for setting, value in leaves(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(setting, value, "allowed: a finite number")
        if setting.rpartition(".")[2] == "seed" and isinstance(value, int) and \
                not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            raise ConfigError(setting, value, f"allowed: an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}")


def check_common(cfg: DictConfig) -> None:
    if not DEVICE.match(str(cfg.device)):  # whether it exists is known only where the stage runs (config.py)
        raise ConfigError("device", cfg.device, "allowed: auto, cpu, cuda, cuda:N")
    if cfg.threads is not None:
        at_least(cfg, "threads", 1)
    one_of(cfg.logger.kind, "logger.kind", LOGGERS)
    if cfg.logger.kind == "wandb":
        one_of(cfg.logger.mode, "logger.mode", LOGGER_MODES)
    one_of(cfg.verify_artifacts, "verify_artifacts", VERIFY_MODES)
    if not str(cfg.output_dir).strip():
        raise ConfigError("output_dir", "''", "allowed: a folder path (it is created when missing)")
    if cfg.stage != "status":  # status only reads: it tries no file in the folder either
        check_writable(Path(cfg.output_dir), "output_dir")
    decode_settings(cfg).validate()  # every stage reads it (trajectories' window defaults to it): named as the user's


def check_launcher(cfg: DictConfig, multirun: bool) -> None:
    la = cfg.launcher
    one_of(la.kind, "launcher.kind", LAUNCHERS)
    if la.kind == "local":
        return
    if multirun:
        raise ConfigError("launcher", la.kind, "launcher=slurm submits the experiment's whole DAG itself; for a "
                                               "Hydra multirun use hydra/launcher=slurm_gpu (or slurm_local)")
    for setting in ("time_min", "cpus_per_task", "mem_gb", "array_parallelism"):
        at_least(cfg, f"launcher.{setting}", 1)
    for setting in ("max_requeues", "signal_delay_s"):
        at_least(cfg, f"launcher.{setting}", 0)
    for setting in ("sweep_tasks", "gpus_per_node"):
        if OmegaConf.select(cfg, f"launcher.{setting}") is not None:
            at_least(cfg, f"launcher.{setting}", 1)
    if la.poll_s <= 0:
        raise ConfigError("launcher.poll_s", la.poll_s, "allowed: a number of seconds > 0")
    if la.signal_delay_s >= la.time_min * 60:
        raise ConfigError("launcher.signal_delay_s", la.signal_delay_s,
                          f"allowed: less than launcher.time_min ({la.time_min} min) in seconds")
    if cfg.stage != "status":
        check_writable(Path(la.folder), "launcher.folder")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if cfg.stage != "status" and missing:
        raise ConfigError("launcher", la.kind, f"{' and '.join(missing)} not on PATH: submit from a machine of the "
                                               "cluster, or use launcher=local")


def check_writable(path: Path, setting: str) -> None:
    """The folder exists and is writable, or the nearest existing parent is a writable folder. Tried, not
    inferred from permission bits: a pseudo file system (``/proc``) or a read-only mount answers ``os.access`` with
    yes and then refuses the write."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(setting, path, f"{existing} is not a folder; allowed: a folder path that can be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(setting, path, f"{existing} is not writable; allowed: a writable folder")
    try:
        with tempfile.TemporaryDirectory(dir=existing, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ConfigError(setting, path, f"{existing} refuses new files ({error.strerror}); allowed: a writable "
                                         "folder") from error


def check_model(cfg: DictConfig, here: bool = True) -> None:
    """The model's settings and files; ``here``: it is loaded on this machine, so its weights must fit the memory
    of ``device`` here."""
    m = cfg.model
    one_of(m.family, "model.family", FAMILIES)
    one_of(m.dtype, "model.dtype", DTYPES)
    one_of(m.implementation, "model.implementation", IMPLEMENTATIONS)
    device = str(cfg.device) if here else None
    if m.random_weights:
        check_random_architecture(m, device)
        return
    if m.family != "embedded" and m.implementation == "remote" and not m.trust_remote_code:
        raise ConfigError("model.trust_remote_code", False, f"model.implementation=remote runs the {m.family} "
                                                            "model's own modeling code; allowed: true")
    if m.path is None:
        raise ConfigError("model.path", None, "allowed: a local directory or a hub id (null only with "
                                              "model.random_weights=true)")
    check_model_files(Path(locate(m.path, m.allow_download)), m, device)


def check_random_architecture(m: DictConfig, device: str | None) -> None:
    """Random weights are built by the native classes from ``model.architecture``, the fields of an official
    ``config.json``: checked by the rules the classes read (models/saved_files.py), with the token ids inside
    the vocabulary and the weights within the device's memory, before anything is allocated."""
    if m.implementation != "native":
        raise ConfigError("model.implementation", m.implementation, "random weights are built by the native "
                                                                    "classes; allowed: native")
    for name in ("mask_token_id", "eos_token_id"):
        if m[name] is None:
            raise ConfigError(f"model.{name}", None, "random weights come with no tokenizer to name it; allowed: "
                                                     "the architecture's token id")
    architecture = OmegaConf.to_container(m.architecture, resolve=True) if m.architecture else {}
    try:
        check_native_config(architecture)
    except FieldError as error:
        raise error.in_setting("model.architecture") from error
    vocab_size = architecture["vocab_size"]
    check_token_settings(m, vocab_size, PLACEHOLDER_CHARACTERS, f"model.architecture.vocab_size={vocab_size}; the "
                         f"placeholder tokenizer gives ids below {PLACEHOLDER_CHARACTERS} to printable characters")
    field = largest_size(architecture)
    check_weights_fit(architecture, m.dtype, device, f"model.architecture.{field}", architecture[field])


def check_token_settings(m: DictConfig, vocab_size: int, lowest: int, vocabulary: str) -> None:
    """The token ids the settings name lie inside the model's vocabulary (``vocabulary``: where its size is set)."""
    for name in ("mask_token_id", "eos_token_id", "end_of_turn_ids"):
        value = OmegaConf.to_container(m[name]) if OmegaConf.is_list(m[name]) else m[name]
        ids = value if isinstance(value, list) else [value]
        if any(i is not None and not lowest <= i < vocab_size for i in ids):
            raise ConfigError(f"model.{name}", value, f"allowed: token ids from {lowest} to {vocab_size - 1} "
                                                      f"({vocabulary})")


def check_weights_fit(config: dict, dtype: str, device: str | None, setting: str, value: object) -> None:
    """The weights ``config`` describes, counted from its sizes, within the memory of ``device`` (None: loaded
    elsewhere, not checked here)."""
    problem = None if device is None else weights_problem(parameter_count(config), dtype, device)
    if problem:
        raise ConfigError(setting, value, problem)


def check_model_files(folder: Path, m: DictConfig, device: str | None) -> None:
    """A local model's config parses and its weight files are whole (a hub id to be downloaded is not checked); a
    model the native classes read has a config they can build, exactly the tensors it gives, token ids inside its
    vocabulary and weights that fit the device."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return
    config = read_json_object(config_file, MODEL_FIX)
    if m.family == "embedded" or m.implementation != "native":
        for weights in sorted(folder.glob("*.safetensors")):
            check_safetensors(weights, MODEL_FIX)
        return
    try:
        check_native_config(config)
    except FieldError as error:
        raise error.in_file(config_file, MODEL_FIX) from error
    compare_tensors(native_tensor_shapes(config), checkpoint_tensors(folder, MODEL_FIX), "the model's config",
                    MODEL_FIX, folder)
    check_token_settings(m, config["vocab_size"], 0, f"vocab_size={config['vocab_size']} in {config_file}")
    check_weights_fit(config, m.dtype, device, "model.path", m.path)


SPLIT_SIZES: dict[tuple, int] = {}


def split_size(task: Task, split: str) -> int:
    """``task.split_size(split)``, counted once per process for each task and split: a synthetic task counts its
    prompts by hashing every one (about 40,000, 0.15 s), and a command validates its config more than once,
    building its tasks anew each time."""
    key = (type(task), repr(sorted(vars(task).items())), split)
    if key not in SPLIT_SIZES:
        SPLIT_SIZES[key] = task.split_size(split)
    return SPLIT_SIZES[key]


def check_task_split(cfg: DictConfig, split_setting: str, count_setting: str, task_setting: str = "task") -> None:
    split, count = OmegaConf.select(cfg, split_setting), OmegaConf.select(cfg, count_setting)
    one_of(split, split_setting, SPLITS)
    task = build_task(OmegaConf.select(cfg, task_setting), task_setting)
    task.check()
    if isinstance(task, LmEvalTask):
        check_lm_eval_split(task, split, split_setting)
    if task.sizes_are_cheap:
        available = split_size(task, split)
        if not 1 <= count <= available:
            raise ConfigError(count_setting, count,
                              f"allowed: 1 to {available} (the distinct prompts of the {split} split)")
    elif count < 1:  # the upper bound is checked when the data loads
        raise ConfigError(count_setting, count, "allowed: an integer >= 1")


LM_EVAL_SPLITS = {"train": ("training_split",), "validation": ("validation_split",),
                  "test": ("test_split", "validation_split")}  # lm-eval's has_*_docs; test: its eval_docs


def check_lm_eval_split(task: LmEvalTask, split: str, split_setting: str) -> None:
    """The lm-eval task declares ``split``: read from its YAML (lm-eval's task config), not its data, so a
    missing split is named before any stage runs."""
    config = lm_eval_task_config(task.lm_eval_task, task.include_path)
    if config is None:  # defined in Python, or not found here: known when the task loads
        return
    declared = [name for name, keys in LM_EVAL_SPLITS.items() if any(config.get(key) for key in keys)]
    if split not in declared:
        raise ConfigError(split_setting, split, f"lm-eval's {task.lm_eval_task} has no {split} split; allowed: "
                                                f"{', '.join(declared) or 'none (its YAML names no split)'}")


@functools.cache  # each stage's *.split reads the same task: lm-eval's files are scanned once per command
def lm_eval_task_config(name: str, include_path: str | None) -> dict | None:
    """The YAML config lm-eval builds task ``name`` from, its includes merged, found where lm-eval's task index
    finds it (``include_path`` first, then lm-eval's own tasks, scanned only when needed); None for a task no YAML
    file names at its top level (a group's member), one defined by a Python class, or a file lm-eval cannot read
    (it says why when it loads the task)."""
    def configs(paths):
        for path in paths:
            with contextlib.suppress(UserError):
                config = read_task_file(path)
                if config.get("task") == name:
                    yield config

    def builtin():  # lm-eval's own files, scanned only when no local one names the task
        yield from (Path(p) for p in sorted(scan_builtin([name])[1][name]))

    local = task_files(Path(include_path)) if include_path else []
    config = next(configs(local), None) or next(configs(builtin()), None)
    return None if config is None or "class" in config else config


def check_features(features, setting: str) -> None:
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise ConfigError(setting, list(features), f"allowed: a non-empty list of {', '.join(FEATURES)}")


def check_trajectories(cfg: DictConfig, multirun: bool) -> None:
    t = cfg.trajectories
    one_of(t.policy, "trajectories.policy", TRAJECTORY_POLICIES)
    check_task_split(cfg, "trajectories.split", "trajectories.num_prompts", "trajectories.task" if t.task else "task")
    DecodeSettings(gen_length=t.gen_length, block_length=t.block_length, steps=t.steps,
                   batch_size=t.batch_size).validate("trajectories")
    check_features(list(t.features), "trajectories.features")
    if not 1 <= t.num_shards <= t.num_prompts:
        raise ConfigError("trajectories.num_shards", t.num_shards,
                          f"allowed: 1 to trajectories.num_prompts ({t.num_prompts})")
    if t.shard is not None:
        if cfg.stage != "trajectories":
            raise ConfigError("trajectories.shard", t.shard,
                              "only with stage=trajectories (one array task per shard); drop it here")
        if not 0 <= t.shard < t.num_shards:
            raise ConfigError("trajectories.shard", t.shard, f"allowed: 0 to {t.num_shards - 1}")
    at_least(cfg, "trajectories.on_policy_rounds", 0, "an integer")


def check_train_filter(cfg: DictConfig, multirun: bool) -> None:
    tf, f = cfg.train_filter, cfg.filter
    check_features(list(f.features), "filter.features")
    missing = [x for x in f.features if x not in cfg.trajectories.features]
    if missing:
        raise ConfigError("filter.features", list(f.features),
                          f"{missing} not recorded; allowed: features in trajectories.features "
                          f"({list(cfg.trajectories.features)})")
    try:
        check_filter_fields(OmegaConf.to_container(f, resolve=True))  # the rules a saved filter.json is read by
    except FieldError as error:
        raise error.in_setting("filter") from error
    if f.architecture == "transformer" and "position" not in f.features:
        raise ConfigError("filter.features", list(f.features), "a transformer filter learns where a position sits "
                                                               "from the position feature; add position")
    check_filter_splits(cfg.trajectories.num_prompts, cfg.seed)
    if not tf.lr > 0:
        raise ConfigError("train_filter.lr", tf.lr, "allowed: a number > 0")
    at_least(cfg, "train_filter.weight_decay", 0, "a number")
    if tf.batch_size is not None:
        at_least(cfg, "train_filter.batch_size", 1)
    for name in ("max_epochs", "val_every_n_epochs", "checkpoint_every_n_epochs"):
        at_least(cfg, f"train_filter.{name}", 1)
    check_probability(tf.threshold, "train_filter.threshold")
    one_of(tf.loss_on, "train_filter.loss_on", LOSS_ON)
    if not tf.pos_weight > 0:
        raise ConfigError("train_filter.pos_weight", tf.pos_weight, "allowed: a number > 0")
    if tf.early_stopping_patience is not None:
        at_least(cfg, "train_filter.early_stopping_patience", 1, "an integer (or null: never stop early)")
    if tf.target_precision is not None:
        check_probability(tf.target_precision, "train_filter.target_precision")


def check_filter_splits(num_prompts: int, seed: int) -> None:
    """train_filter splits the trajectories' prompts 80/10/10 by a hash of the prompt and the seed: each split
    must get at least one, known from the count before any trajectory is computed."""
    filled = {filter_split_of(prompt, seed) for prompt in range(num_prompts)}
    empty = [name for name in FILTER_SPLITS if name not in filled]
    if empty:
        raise ConfigError("trajectories.num_prompts", num_prompts,
                          f"too few prompts for train_filter: the 80/10/10 split by prompt (seed={seed}) leaves "
                          f"{empty[0]} empty; allowed: more prompts (a few dozen at least)")


def check_train_policy(cfg: DictConfig, multirun: bool) -> None:
    tp = cfg.train_policy
    check_train_filter(cfg, multirun)  # its warm start
    for name in ("updates", "prompts_per_update", "val_prompts", "val_every_n_updates", "checkpoint_every_n_updates"):
        at_least(cfg, f"train_policy.{name}", 1)
    at_least(cfg, "train_policy.group_size", 2)  # a group's mean is each rollout's baseline
    if tp.num_prompts < tp.prompts_per_update:
        raise ConfigError("train_policy.num_prompts", tp.num_prompts,
                          f"allowed: at least train_policy.prompts_per_update ({tp.prompts_per_update})")
    check_task_split(cfg, "train_policy.split", "train_policy.num_prompts")
    task = build_task(cfg.task)
    if task.sizes_are_cheap and tp.num_prompts + tp.val_prompts > split_size(task, tp.split):
        raise ConfigError("train_policy.val_prompts", tp.val_prompts,
                          f"allowed: 1 to {split_size(task, tp.split) - tp.num_prompts} (the {tp.split} split's "
                          f"prompts after train_policy.num_prompts)")
    if not tp.lr > 0:
        raise ConfigError("train_policy.lr", tp.lr, "allowed: a number > 0")
    at_least(cfg, "train_policy.kl_weight", 0, "a number")
    weights = list(tp.speed_weights)
    if len(weights) != 2 or not 0 <= weights[0] <= weights[1]:
        raise ConfigError("train_policy.speed_weights", weights, "allowed: [low, high] with 0 <= low <= high (low = "
                                                                 "high: one fixed speed preference)")
    if tp.speed_draw not in SPEED_DRAWS:
        raise ConfigError("train_policy.speed_draw", tp.speed_draw, f"allowed: {', '.join(SPEED_DRAWS)}")
    if tp.speed_draw == "log_uniform" and not weights[0] > 0:
        raise ConfigError("train_policy.speed_weights", weights, "allowed with train_policy.speed_draw=log_uniform: "
                                                                 "[low, high] with 0 < low <= high")
    if tp.reward not in POLICY_REWARDS:
        raise ConfigError("train_policy.reward", tp.reward, f"allowed: {', '.join(POLICY_REWARDS)}")
    if not tp.knob:
        raise ConfigError("train_policy.knob", [], "allowed: a non-empty list of speeds within "
                                                   "train_policy.speed_weights")
    for speed in tp.knob:
        if not weights[0] <= speed <= weights[1]:
            raise ConfigError("train_policy.knob", speed, f"allowed: speeds from {weights[0]:g} to {weights[1]:g} "
                                                          "(train_policy.speed_weights, the range it was trained on)")
    if not SEED_RANGE[0] <= tp.seed <= SEED_RANGE[1]:
        raise ConfigError("train_policy.seed", tp.seed, f"allowed: {SEED_RANGE[0]} to {SEED_RANGE[1]}")


def check_tied_block_length(cfg: DictConfig, block_length: int) -> None:
    """An MLP filter reads blocks of its training length only (a transformer filter reads any)."""
    if cfg.filter.architecture == "mlp" and block_length != cfg.trajectories.block_length:
        raise ConfigError("trajectories.block_length", cfg.trajectories.block_length,
                          f"the filter is tied to its block length; allowed: the decoded block length "
                          f"({block_length})")


def check_filter_path(path: str | None, setting: str) -> dict | None:
    """A saved filter (or policy) folder: every field of its filter.json and the tensors of its filter.safetensors
    (models/saved_files.py, as models/filter.py loads it); its description, or None without a path."""
    if path is None:
        return None
    folder = Path(path)
    if not (folder / "filter.json").is_file():
        raise ConfigError(setting, path, "no saved filter there; allowed: a train_filter artifact's filter/ folder "
                                         "(with filter.json and filter.safetensors)")
    return check_saved_filter(folder, FILTER_FIX)


def check_saved_speed(settings: DecodeSettings, description: dict | None) -> None:
    """A saved filter decodes at a speed only if it reads one (``decode.speed`` on any other is refused), and a
    speed-conditioned one needs a speed, given or stored: the rule the policy's builder applies."""
    if description is not None:
        settings.filter_speed(description["speed_conditioned"], description["speed"], settings.filter_path)


def check_sweep(cfg: DictConfig, multirun: bool) -> None:
    s = cfg.sweep
    check_task_split(cfg, "sweep.split", "sweep.num_prompts")
    at_least(cfg, "sweep.block_length", 1)
    if not s.gen_lengths:
        raise ConfigError("sweep.gen_lengths", [], "allowed: a non-empty list of generation lengths")
    if not s.grid and not multirun:
        raise ConfigError("sweep.grid", [], "allowed: a non-empty list of decode settings")
    if s.steps_per_block is not None and not 1 <= s.steps_per_block <= s.block_length:
        raise ConfigError("sweep.steps_per_block", s.steps_per_block,
                          f"allowed: 1 to sweep.block_length ({s.block_length}), or null (one token per step)")
    decode_settings(cfg).validate()  # the user's choice is checked even where the grid overrides it
    check_filter_path(cfg.decode.filter_path, "decode.filter_path")
    settings = sweep_settings(cfg, multirun)
    size = max(setting.batch_size for setting in settings)
    batches = -(-s.num_prompts // size)
    if not 1 <= s.num_shards <= batches:
        raise ConfigError("sweep.num_shards", s.num_shards,
                          f"allowed: 1 to {batches} (shards are cut at whole batches, so that every "
                          f"output is an unsharded run's: sweep.num_prompts={s.num_prompts} in batches of {size})")
    for setting in settings:
        check_saved_speed(setting, check_filter_path(setting.filter_path, "decode.filter_path"))
        if setting.learned and not setting.filter_path:
            check_tied_block_length(cfg, setting.block_length)
        if setting.policy == "filter" and setting.threshold is None and not setting.filter_path and \
                cfg.train_filter.target_precision is None:
            raise ConfigError("decode.threshold", None, "a filter's validated threshold needs "
                                                        "train_filter.target_precision; allowed: a number in (0, 1]")


def check_aggregate(cfg: DictConfig, multirun: bool) -> None:
    if not 0 <= cfg.aggregate.tolerance < 1:
        raise ConfigError("aggregate.tolerance", cfg.aggregate.tolerance, "allowed: a number in [0, 1)")


def check_benchmark(cfg: DictConfig, multirun: bool) -> None:
    check_sweep(cfg, multirun)  # the benchmark times the sweep's grid
    check_task_split(cfg, "benchmark.split", "benchmark.num_prompts")
    if cfg.benchmark.batch_size is not None:
        at_least(cfg, "benchmark.batch_size", 1)
    if not 0 <= cfg.benchmark.warmup <= cfg.benchmark.num_prompts:
        raise ConfigError("benchmark.warmup", cfg.benchmark.warmup,
                          f"allowed: 0 to benchmark.num_prompts ({cfg.benchmark.num_prompts})")


def check_evaluate(cfg: DictConfig, multirun: bool) -> None:
    settings = decode_settings(cfg).validate()
    check_task_split(cfg, "eval.split", "eval.num_prompts")
    if settings.learned and not settings.filter_path:
        raise ConfigError("decode.filter_path", None, f"decode={settings.policy} needs a saved filter (a "
                                                      "train_filter artifact's filter/ folder or a train_policy "
                                                      "artifact's policy/ folder)")
    check_saved_speed(settings, check_filter_path(settings.filter_path, "decode.filter_path"))


def check_score_references(cfg: DictConfig, multirun: bool) -> None:
    if cfg.references.num_prompts is None:
        one_of(cfg.references.split, "references.split", SPLITS)
        build_task(cfg.task).check()
    else:
        check_task_split(cfg, "references.split", "references.num_prompts")


def check_pretrain(cfg: DictConfig, multirun: bool) -> None:
    p = cfg.pretrain
    for name in ("batch_size", "max_steps", "val_every", "val_prompts", "checkpoint_every"):
        at_least(cfg, f"pretrain.{name}", 1)
    at_least(cfg, "pretrain.warmup_steps", 0)
    if not p.lr > 0:
        raise ConfigError("pretrain.lr", p.lr, "allowed: a number > 0")
    if len(p.windows) != len(p.window_weights) or not p.windows:
        raise ConfigError("pretrain.window_weights", list(p.window_weights),
                          f"allowed: one weight per window ({len(p.windows)})")
    if any(w < 0 for w in p.window_weights) or not sum(p.window_weights) > 0:
        raise ConfigError("pretrain.window_weights", list(p.window_weights), "allowed: weights >= 0, not all 0")
    if p.val_block_length < 1 or p.val_gen_length < 1 or p.val_gen_length % p.val_block_length:
        raise ConfigError("pretrain.val_block_length", p.val_block_length,
                          f"allowed: a positive divisor of pretrain.val_gen_length ({p.val_gen_length})")
    build_task(cfg.task)
    if p.init_from is not None:
        check_init_from(p.init_from, p.architecture)
    check_writable(Path(p.work_dir), "pretrain.work_dir")
    check_writable(Path(p.save_to), "pretrain.save_to")


def check_init_from(init_from: str, architecture: DictConfig) -> None:
    """A warm start copies every weight, so the saved model's shape must be the one about to be trained."""
    config_file = Path(init_from) / "config.json"
    if not config_file.is_file():
        raise ConfigError("pretrain.init_from", init_from, "no saved model there; allowed: a folder written by "
                                                           "stage=pretrain (config.json, model.safetensors) or null")
    saved = read_json_object(config_file, "point pretrain.init_from at a folder written by stage=pretrain")
    for name, value in architecture.items():
        if name in saved and saved[name] != value:
            raise ConfigError(f"pretrain.architecture.{name}", value,
                              f"pretrain.init_from={init_from} has {name}={saved[name]}; allowed: {saved[name]} "
                              "(a warm start keeps the saved model's architecture)")


CHECKS = {"trajectories": check_trajectories, "train_filter": check_train_filter,
          "train_policy": check_train_policy, "sweep": check_sweep,
          "aggregate": check_aggregate, "evaluate": check_evaluate, "score_references": check_score_references,
          "pretrain": check_pretrain, "benchmark": check_benchmark}
