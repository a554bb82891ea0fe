"""Loading a dLLM and its tokenizer through ``from_pretrained``, the embedded model and hub models alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from pipeline.config import model_dtype


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    mask_id: int
    eos_id: int
    max_context: int | None
    device: torch.device


def load_model(cfg: DictConfig, device: torch.device) -> LoadedModel:
    from transformers import AutoModel, AutoTokenizer

    import models  # noqa: F401  (registers the embedded model with AutoModel)

    path = Path(cfg.path)
    if not path.exists():
        raise FileNotFoundError(
            f"model.path={path} does not exist; for the embedded model run `python -m pipeline stage=pretrain`, "
            "for a hub model download it first and point model.path at the local copy"
        )
    dtype = model_dtype(cfg.dtype, device)
    trust = bool(cfg.get("trust_remote_code", False))
    model = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
    mask_id = cfg.get("mask_token_id") or getattr(model.config, "mask_token_id", None) or tokenizer.mask_token_id
    eos_id = cfg.get("eos_token_id") or tokenizer.eos_token_id
    if mask_id is None or eos_id is None:
        raise ValueError(f"model at {path}: set model.mask_token_id and model.eos_token_id (not found in its config)")
    max_context = getattr(model.config, "max_position_embeddings", None)
    return LoadedModel(model, tokenizer, int(mask_id), int(eos_id), max_context, device)
