"""Reads an offline W&B run file back, so tests can assert what was logged.

The ``.wandb`` file is a LevelDB-style log: a 7-byte header, 32 KiB blocks, and records with a
crc32 / length / type header whose payloads (possibly split across blocks) are ``Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    out, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        room = BLOCK - offset % BLOCK
        if room < HEADER:  # block trailer padding
            offset += room
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if length == 0 and kind == 0:
            offset += room
            continue
        payload = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


def summary_and_history(run_dir: Path) -> tuple[dict, list[dict], dict]:
    """(final summary, history rows, run info: group, job_type, name) of one offline run directory."""
    run_file = next(Path(run_dir).glob("*.wandb"))
    summary, history, info = {}, [], {}
    for record in records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            info = {"group": record.run.run_group, "job_type": record.run.job_type,
                    "name": record.run.display_name, "project": record.run.project}
    return summary, history, info
