"""Config helpers shared by every stage: resolvers, the project root, and building objects from config."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def register_resolvers() -> None:
    """``${project_root:}`` lets configs name shipped files wherever the command is run from."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA device is available; allowed here: cpu, auto")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ValueError(f"device={name!r} is unknown; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def model_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPU, float32 on CPU."""
    allowed = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in allowed:
        raise ValueError(f"model.dtype={name!r} is unknown; allowed: {', '.join(allowed)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return allowed[name]
