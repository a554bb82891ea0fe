"""Loading a dLLM and its tokenizer through ``from_pretrained``, the embedded model and hub models alike.

The model family (``model.family``) decides how the model is called and read (:mod:`models.families`); a model
that ignores the attention mask is found once at load and then decoded one prompt at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from models.errors import ConfigError, InputError, UserError
from models.saved_files import MODEL_FIX
from pipeline.modeling.device import model_dtype
from pipeline.modeling.files import locate

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # what the decoding loop calls (the family's adapter around a hub model)
    tokenizer: object
    mask_id: int
    eos_id: int  # end-of-text, also written as padding after an EoTP cut
    max_context: int | None
    device: torch.device
    end_ids: tuple[int, ...] = ()  # every token that ends the text: end-of-text and end-of-turn
    honours_attention_mask: bool = True  # False: batched left padding would change outputs; decode one at a time


def snapshot(path: str, local_only: bool) -> str:
    """A local folder holding the checkpoint: ``path`` itself, or the hub's snapshot of it (downloaded only when
    allowed)."""
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    return snapshot_download(path, local_files_only=local_only)


def load_model(cfg: DictConfig, device: torch.device) -> LoadedModel:
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer

    import models.diffusion_lm  # noqa: F401  (registers the embedded model with AutoModel)
    from models.families import adapt, honours_attention_mask

    if cfg.random_weights:
        return random_model(cfg, device)
    path = locate(cfg.path, cfg.allow_download)
    dtype = model_dtype(cfg.dtype, device)
    trust = bool(cfg.trust_remote_code)
    local_only = not cfg.allow_download
    native = cfg.family != "embedded" and cfg.implementation == "native"
    try:
        if native:
            from models.checkpoint import load_native

            model = load_native(snapshot(path, local_only), dtype, device)
        else:
            model = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, local_files_only=local_only)
    except UserError:  # a file the checks name already, with the field or tensor at fault
        raise
    except (OSError, ValueError, RuntimeError, KeyError, ImportError, SafetensorError) as error:  # damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(path, f"the model could not be loaded ({type(error).__name__}: {first})", MODEL_FIX) from error
    model = model if native else adapt(model.to(device).eval(), cfg.family)
    mask_id = cfg.mask_token_id or getattr(model.config, "mask_token_id", None) or tokenizer.mask_token_id
    eos_id = cfg.eos_token_id or tokenizer.eos_token_id
    if mask_id is None or eos_id is None:
        raise ConfigError("model.mask_token_id", mask_id, f"the model at {path} names no mask or end-of-text token; "
                          "set model.mask_token_id and model.eos_token_id")
    end_ids = tuple(dict.fromkeys([int(eos_id), *(int(i) for i in cfg.end_of_turn_ids)]))
    config = model.config  # LLaDA names its context max_sequence_length
    max_context = getattr(config, "max_position_embeddings", None) or getattr(config, "max_sequence_length", None)
    honours = True
    if cfg.family != "embedded":
        probe = tokenizer("Is the attention mask honoured?", add_special_tokens=False)["input_ids"]
        honours = honours_attention_mask(model, probe, int(eos_id), int(mask_id))
        if not honours:
            log.warning("the model at %s ignores the attention mask (batched left-padded prompts would change its "
                        "outputs): decoding one prompt at a time", path)
    return LoadedModel(model, tokenizer, int(mask_id), int(eos_id), max_context, device, end_ids, honours)


def random_model(cfg: DictConfig, device: torch.device) -> LoadedModel:
    """``model.architecture`` built by the native classes with random weights and a placeholder tokenizer: the real
    architecture's speed (``stage=benchmark``) with nothing downloaded. Its outputs mean nothing."""
    from omegaconf import OmegaConf

    from models.checkpoint import random_native
    from models.tokenizer import build_placeholder_tokenizer

    architecture = OmegaConf.to_container(cfg.architecture, resolve=True)
    try:
        model = random_native(architecture, model_dtype(cfg.dtype, device), device)
    except (ValueError, TypeError) as error:  # a field the native classes refuse, or one they do not know
        raise ConfigError("model.architecture", architecture.get("model_type"), str(error).splitlines()[0]) from error
    vocab_size = int(architecture["vocab_size"])
    end_ids = tuple(dict.fromkeys([int(cfg.eos_token_id), *(int(i) for i in cfg.end_of_turn_ids)]))
    tokenizer = build_placeholder_tokenizer(vocab_size, int(cfg.eos_token_id), int(cfg.mask_token_id), end_ids[1:])
    config = model.config
    max_context = getattr(config, "max_position_embeddings", None) or getattr(config, "max_sequence_length", None)
    log.info("random weights: %s with %.0fM parameters on %s (%s)", architecture["model_type"],
             sum(p.numel() for p in model.parameters()) / 1e6, device, model_dtype(cfg.dtype, device))
    return LoadedModel(model, tokenizer, int(cfg.mask_token_id), int(cfg.eos_token_id), max_context, device, end_ids)
