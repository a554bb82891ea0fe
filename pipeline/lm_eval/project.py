"""The ``learn2pd`` model's arguments (``--model_args``) as the project's config: composed from its Hydra configs and
validated as the main command line validates its own, torch-free, so both the command line (before lm-eval loads
anything) and the model class (when lm-eval builds it) read the same config."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from models.errors import ConfigError
from pipeline.decoding.settings import DecodeSettings

DECODE_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeSettings) if f.name != "policy")
MODEL_ARGS = ("model", "model_path", "dtype", "decode", "device", "seed", "mc_num", "mc_batch_size", "check_greedy",
              "batch_size", "max_batch_size")
LM_EVAL_DEFAULT_DEVICE = "cuda:0"  # what lm-eval passes when --device is not given
GIVEN_AS = {"model.path": "model_path", "model.dtype": "dtype", "device": "device", "seed": "seed"}


# --- the learn2pd model's arguments -----------------------------------------------------------------------------
def whole(value: Any) -> int | None:
    """An integer given as one (lm-eval reads ``-1`` as a float), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if isinstance(value, int) or value.is_integer() else None


def decode_batch(value: Any, setting: str) -> int | None:
    """lm-eval's batch size as the decode batch; ``auto`` / ``auto:N`` (lm-eval's own tuning) keep the preset's."""
    if value is None or re.fullmatch(r"auto(:\d+)?", str(value)):
        return None
    number = int(value) if isinstance(value, str) and value.isdigit() else whole(value)
    if number is None or number < 1:
        raise ConfigError(setting, value, "allowed: an integer >= 1, auto or auto:N")
    return number


def check_model_args(model_args: dict[str, Any]) -> None:
    """The model arguments' names and types, before anything is composed (lm-eval has turned ``true`` and numbers
    into Python values)."""
    from pipeline.configuration.validation import DEVICE, SEED_RANGE

    unknown = sorted(set(model_args) - set(MODEL_ARGS) - set(DECODE_FIELDS))
    if unknown:
        raise ConfigError(f"--model_args {unknown[0]}", model_args[unknown[0]],
                          f"allowed: {', '.join(dict.fromkeys(MODEL_ARGS + DECODE_FIELDS))}")
    for key, value in model_args.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--model_args {key}", value, "allowed: a finite number")
    for key in ("mc_num", "mc_batch_size", "max_batch_size"):
        value = model_args.get(key)
        if value is not None and (whole(value) is None or whole(value) < 1):
            raise ConfigError(f"--model_args {key}", value, "allowed: an integer >= 1")
    mc_num, mc_batch_size = whole(model_args.get("mc_num", 128)), whole(model_args.get("mc_batch_size", 32))
    if mc_num % mc_batch_size:
        raise ConfigError("--model_args mc_num", mc_num, f"allowed: a positive multiple of mc_batch_size "
                                                         f"({mc_batch_size})")
    seed = model_args.get("seed", 0)
    if whole(seed) is None or not SEED_RANGE[0] <= whole(seed) <= SEED_RANGE[1]:
        raise ConfigError("--model_args seed", seed, f"allowed: an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}")
    if not isinstance(model_args.get("check_greedy", False), bool):
        raise ConfigError("--model_args check_greedy", model_args["check_greedy"], "allowed: true, false")
    device = model_args.get("device")
    if device is not None and not DEVICE.match(str(device)):
        raise ConfigError("--model_args device", device, "allowed: auto, cpu, cuda, cuda:N")
    decode_batch(model_args.get("batch_size"), "--model_args batch_size")


def hydra_value(value: Any) -> str:
    """A model argument as a Hydra override value; a string Hydra would parse as more than a string is quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and not re.fullmatch(r"[\w./:+-]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def as_given(error: ConfigError, model_args: dict[str, Any]) -> ConfigError:
    """A project setting's error named as the user gave it (``decode.temperature`` -> ``--model_args temperature``),
    when they gave it; a preset's own value keeps the project's name."""
    key = GIVEN_AS.get(error.setting, error.setting.removeprefix("decode."))
    return ConfigError(f"--model_args {key}", error.value, error.allowed) if key in model_args else error


def compose_project(model_args: dict[str, Any]) -> Any:
    """The project's config for these model arguments, composed from its Hydra configs and validated as the main
    command line validates its own: every number finite, seeds in range, the decode setting, a learned policy's
    saved filter, the model's files. Torch-free, so the command line checks it before lm-eval loads anything."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    from pipeline.configuration.command import decode_settings, typed
    from pipeline.configuration.hydra import CONF_DIR, register
    from pipeline.configuration.validation import check_filter_path, check_model, check_numbers

    check_model_args(model_args)
    decode = {k: v for k, v in model_args.items() if k in DECODE_FIELDS and k != "batch_size"}
    batch = decode_batch(model_args.get("batch_size"), "--model_args batch_size")
    if batch is not None:
        decode["batch_size"] = batch
    try:
        typed(OmegaConf.structured(DecodeSettings), decode, "decode")
    except ConfigError as error:
        raise as_given(error, model_args) from error
    overrides = [f"model={model_args.get('model', 'tiny')}", f"decode={model_args.get('decode', 'vanilla')}",
                 f"seed={hydra_value(model_args.get('seed', 0))}", "logger=none"]
    for key, setting in (("model_path", "model.path"), ("dtype", "model.dtype"), ("device", "device")):
        if model_args.get(key) is not None:
            overrides.append(f"{setting}={hydra_value(model_args[key])}")
    overrides += [f"decode.{k}={hydra_value(v)}" for k, v in decode.items()]
    register()
    if GlobalHydra.instance().is_initialized():  # called from inside another Hydra application
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="lm_eval"):
            cfg = compose(config_name="config", overrides=overrides)
    except MissingConfigException as error:  # model= or decode= names no preset
        group, _, name = (error.missing_cfg_file or "").rpartition("/")
        if group not in model_args:
            raise
        presets = ", ".join(sorted(o for o in error.options or [] if o != "schema"))
        raise ConfigError(f"--model_args {group}", name, f"no such preset; allowed: {presets}") from error
    try:
        check_numbers(cfg)
        settings = decode_settings(cfg).validate()
        if settings.learned and not settings.filter_path:
            raise ConfigError("--model_args filter_path", None, f"the {settings.policy} policy needs a saved filter "
                                                                "here; allowed: the filter/ folder of a train_filter "
                                                                "artifact")
        check_filter_path(settings.filter_path, "decode.filter_path")
        check_model(cfg)
    except ConfigError as error:
        raise as_given(error, model_args) from error
    return cfg


