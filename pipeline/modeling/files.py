"""Finding a model's files without importing torch: a local directory, or a hub id in the local hub cache.

Weights are never downloaded unless ``model.allow_download=true``.
"""

from __future__ import annotations

import re
from pathlib import Path

from models.errors import ConfigError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def locate(path: str, allow_download: bool = False) -> str:
    """The directory holding the model's ``config.json``, or the hub id itself when a download is allowed."""
    local = Path(path).expanduser()
    if (local / "config.json").is_file():
        return str(local)
    if HUB_ID.match(path) and not local.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
        if isinstance(cached, str):
            return str(Path(cached).parent)
        if allow_download:
            return path
        raise ConfigError("model.path", path,
                          "not a local directory and not in the local hub cache; download it with `huggingface-cli "
                          f"download {path} --local-dir DIR` and set model.path=DIR (or model.allow_download=true)")
    raise ConfigError("model.path", path,
                      "no model there (expected config.json and weights); for the embedded model run `python -m "
                      "pipeline stage=pretrain`, for a hub model download it and point model.path at the local copy")
