"""Which device and dtype a run uses, from the config's names. Torch is imported only inside, so the command line
can validate a config without it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one, or for a GPU index the machine lacks, is an
    error, not a silent fallback. Checked where the stage runs (a login node submitting GPU jobs has none)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError("device", name, "allowed: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("device", name, "no CUDA device is available here; allowed here: cpu, auto")
        if int(name.partition(":")[2] or 0) >= count:
            raise ConfigError("device", name, f"this machine has {count} GPU(s); allowed here: cuda, cuda:0 to "
                                              f"cuda:{count - 1}, cpu, auto")
    return torch.device(name)


def model_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPU, float32 on CPU."""
    import torch

    allowed = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in allowed:
        raise ConfigError("model.dtype", name, f"allowed: {', '.join(allowed)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return allowed[name]
