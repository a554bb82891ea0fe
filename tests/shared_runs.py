"""Pipeline runs that many tests read, made once per test session.

The first test to ask (in any pytest-xdist worker) runs the command line under a file lock; the others wait for it
and read the same folder. A test that changes a run works on its own copy (``tests.test_artifacts.copy_of``), and a
run that only needs another's upstream artifacts starts from copies of them (``seed``), so each test computes the
stage it is about and the suite trains and decodes the micro experiment's upstream once. The micro run starts a new
interpreter, as a user's command does; the others run in the process of the test that asks first, as most
commands of the suite do (``tests.in_process``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from filelock import FileLock

from tests.test_cli import run_cli

UPSTREAM = ("trajectories", "train_filter")  # the stages every micro command needs before its own


def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this test session shares (each worker's base temp is a child of it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def seed(out: Path, source: Path, stages: tuple[str, ...] = UPSTREAM) -> Path:
    """Copy the complete artifacts of ``stages`` from the output folder ``source`` into ``out``; returns ``out``."""
    for stage in stages:
        for manifest in (source / "artifacts" / stage).glob("*/manifest.json"):
            shutil.copytree(manifest.parent, out / "artifacts" / stage / manifest.parent.name)
    return out


def shared_run(tmp_path_factory: pytest.TempPathFactory, name: str, args: list[str],
               seeded_from: Path | None = None, fresh_interpreter: bool = False
               ) -> tuple[Path, subprocess.CompletedProcess]:
    """The output folder of ``python -m pipeline *args`` run once per session under ``name``, and its result;
    ``seeded_from``: an output folder whose upstream artifacts the run starts from."""
    folder = session_dir(tmp_path_factory) / "shared" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    out, record = folder / "out", folder / "result.json"
    with FileLock(f"{folder}.lock"):
        if not record.exists():
            shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt that failed
            folder.mkdir()
            if seeded_from is not None:
                seed(out, seeded_from)
            result = run_cli(*args, f"output_dir={out}", timeout=600, fresh_interpreter=fresh_interpreter)
            assert result.returncode == 0, result.stderr[-4000:]
            record.write_text(json.dumps({"args": result.args, "stdout": result.stdout, "stderr": result.stderr}))
        saved = json.loads(record.read_text())
    return out, subprocess.CompletedProcess(saved["args"], 0, saved["stdout"], saved["stderr"])
