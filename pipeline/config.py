"""Config helpers shared by every stage: registration with Hydra, the project root, devices and dtypes.

Torch is imported only inside the functions that need it, so the CLI can validate a config without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


def register() -> None:
    """The typed schema (``schema``) and ``${project_root:}``, which lets configs name shipped files wherever
    the command is run from."""
    from pipeline.schema import register_schemas

    register_schemas()
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


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
