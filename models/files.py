"""Reading the small files a run is pointed at (a model's ``config.json``, a saved filter, a job record) and
checking a weights file's structure, torch-free, so a damaged one is named in one line before any work starts."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from models.errors import InputError


def read_json_object(file: Path, fix: str) -> dict[str, Any]:
    """The JSON object in ``file``; anything else (unreadable, not JSON, not an object) names the file."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(file, f"not a readable JSON file ({type(error).__name__}: {error})", fix) from error
    if not isinstance(data, dict):
        raise InputError(file, f"holds a JSON {type(data).__name__}, not an object", fix)
    return data


def check_safetensors(file: Path, fix: str) -> dict[str, Any]:
    """The tensor table of a ``.safetensors`` file, checked against the file: an 8-byte header length, a JSON
    header, and tensors with a shape whose byte ranges fill the rest exactly (the format's own rules). A truncated,
    padded or foreign file fails here in microseconds; a same-size change inside the tensor bytes cannot be seen
    without a recorded digest (artifacts have one)."""
    try:
        with open(file, "rb") as handle:
            size = file.stat().st_size
            header_size = struct.unpack("<Q", handle.read(8))[0] if size >= 8 else None
            if header_size is None or header_size > size - 8:
                raise InputError(file, "not a safetensors file (its header length does not fit the file)", fix)
            header = json.loads(handle.read(header_size))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(file, f"not a safetensors file ({type(error).__name__}: {error})", fix) from error
    if not isinstance(header, dict):
        raise InputError(file, "not a safetensors file (its header is not a table of tensors)", fix)
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    try:
        end = max((int(entry["data_offsets"][1]) for entry in tensors.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as error:
        raise InputError(file, f"not a safetensors file (a tensor entry lacks its byte range: {error})", fix) from error
    if end != size - 8 - header_size:
        raise InputError(file, f"damaged safetensors file (its tensors take {end} bytes, the file holds "
                               f"{size - 8 - header_size} after the header)", fix)
    for name, entry in tensors.items():
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise InputError(file, f"not a safetensors file (tensor {name!r} has no shape)", fix)
    return tensors
