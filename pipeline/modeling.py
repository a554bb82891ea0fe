"""Loading a dLLM and its tokenizer through ``from_pretrained``, the embedded model and hub models alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from pipeline.config import model_dtype
from pipeline.errors import ConfigError, InputError


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    mask_id: int
    eos_id: int
    max_context: int | None
    device: torch.device


def load_model(cfg: DictConfig, device: torch.device) -> LoadedModel:
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer

    import models  # noqa: F401  (registers the embedded model with AutoModel)

    path = Path(cfg.path)
    dtype = model_dtype(cfg.dtype, device)
    trust = bool(cfg.trust_remote_code)
    fix = ("re-download the weights, or for the embedded model rebuild them with `python -m pipeline stage=pretrain` "
           "(or `git checkout models/checkpoints`)")
    if not (path / "config.json").is_file():
        raise InputError(path, "no model here (expected config.json and weights)", fix)
    try:
        model = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:  # damaged or incomplete files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(path, f"the model could not be loaded ({type(error).__name__}: {first})", fix) from error
    mask_id = cfg.mask_token_id or getattr(model.config, "mask_token_id", None) or tokenizer.mask_token_id
    eos_id = cfg.eos_token_id or tokenizer.eos_token_id
    if mask_id is None or eos_id is None:
        raise ConfigError("model.mask_token_id", mask_id, f"the model at {path} names no mask or end-of-text token; "
                          "set model.mask_token_id and model.eos_token_id")
    max_context = getattr(model.config, "max_position_embeddings", None)
    return LoadedModel(model, tokenizer, int(mask_id), int(eos_id), max_context, device)
