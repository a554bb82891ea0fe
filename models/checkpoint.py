"""Official hub checkpoints into this project's native model classes: ``config.json`` read under its own field
names, weights from one ``model.safetensors`` or from shards listed by ``model.safetensors.index.json``.

The model is built on the meta device and the checkpoint's tensors are assigned to it (converted to the run's
dtype and device shard by shard), so a model is never held twice in memory. Every tensor name and shape is
checked against the model first, from the files' headers (:mod:`models.saved_files`, as the pre-flight validation
checks them): a missing, extra or misshaped tensor, in the index or in a shard, is an InputError (and ValueError)
naming it and its file.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from models.saved_files import MODEL_FIX, checkpoint_tensors, compare_tensors

# model_type in config.json -> (module, config class, model class) of the native implementation
NATIVE = {"llada": ("models.llada", "LLaDAConfig", "LLaDAModel"),
          "Dream": ("models.dream", "DreamConfig", "DreamModel")}


def build_native(config: dict, where: str) -> nn.Module:
    """The native model of an official config, on the meta device (no memory yet)."""
    model_type = config.get("model_type")
    if model_type not in NATIVE:
        raise ValueError(f"{where}: model_type={model_type!r} has no native implementation "
                         f"(native: {', '.join(NATIVE)}); use model.implementation=remote")
    module, config_class, model_class = NATIVE[model_type]
    classes = importlib.import_module(module)
    native_config = getattr(classes, config_class).from_dict(config)
    with torch.device("meta"):
        return getattr(classes, model_class)(native_config)


def load_native(folder: str | Path, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The native model of the checkpoint in ``folder``, its weights in ``dtype`` on ``device``, in eval mode."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = build_native(config, str(folder / "config.json"))
    located = checkpoint_tensors(folder)
    compare_tensors({name: tuple(t.shape) for name, t in model.state_dict().items()}, located, "the model's config",
                    MODEL_FIX, folder)
    state = {}
    for file in sorted({file for file, _ in located.values()}):
        with safe_open(file, framework="pt", device=str(device)) as handle:
            for name in (name for name, (held_in, _) in located.items() if held_in == file):
                state[name] = handle.get_tensor(name).to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


RANDOM_STD = 0.02  # the official configs' init_std / initializer_range


@torch.no_grad()
def random_native(config: dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> nn.Module:
    """The native model of an official config with random weights, drawn on ``device`` in ``dtype``: norms at one,
    every other tensor normal with the official initialisation's standard deviation. Forward time does not
    depend on the values, so this times the real architecture without its checkpoint."""
    model = build_native(config, "model.architecture").to(dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, parameter in model.named_parameters():
        if parameter.ndim == 1 and "norm" in name:
            parameter.fill_(1.0)
        elif parameter.ndim == 1:  # biases (Dream's query, key and value projections)
            parameter.zero_()
        else:
            parameter.normal_(0.0, RANDOM_STD, generator=generator)
    return model.eval()
