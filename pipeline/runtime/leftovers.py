"""What a run adds to its output folder, so that a run stopped by the user's input leaves nothing behind.

Most bad input is refused before Hydra starts (:mod:`pipeline.configuration.validation`); what can only be found
once a run has started (a damaged model file, a prompt the tokenizer cannot read, an sbatch refusal) or a Ctrl-C
would otherwise leave a run folder, empty artifact folders and lock files. :class:`Leftovers` notes what existed
when the run began and, on such a stop, removes what the run added that holds no result: new lock files (with their
holder notes), new empty folders, and the run's own folder (its config and log) when nothing else of the run is
kept. Finished artifacts and the atomic pieces of unfinished ones (trajectory shards, sweep settings, checkpoints)
stay: they are what a rerun resumes from.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path

from filelock import FileLock, Timeout

BOOKKEEPING = (".inputs.json",)  # what an artifact's work folder records about itself before any result


class Leftovers:
    def __init__(self, root: str | Path) -> None:
        """Taken before the run starts; the run's own folder (``run_dir``) is set once Hydra has made it."""
        self.root = Path(root)
        self.run_dir: Path | None = None
        self.existed = self.listing()

    def listing(self) -> set[Path]:
        if not self.root.exists():
            return set()
        return {self.root, *self.root.rglob("*")}

    def added(self) -> list[Path]:
        """Paths the run created, deepest first."""
        return sorted(self.listing() - self.existed, key=lambda p: len(p.parts), reverse=True)

    def remove(self) -> None:
        """Remove what the run added that holds no result (see the module's docstring)."""
        run_dir = self.run_dir if self.run_dir is not None and self.run_dir not in self.existed else None
        for path in self.added():
            if run_dir is not None and path.is_relative_to(run_dir):
                continue
            if path.suffix == ".lock" and path.is_file():
                remove_unheld_lock(path)
            elif path.name in BOOKKEEPING and path.is_file():
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        kept = [p for p in self.added() if p.is_file() and not (run_dir is not None and p.is_relative_to(run_dir))]
        if run_dir is not None and not kept:
            shutil.rmtree(run_dir, ignore_errors=True)
            for parent in run_dir.parents:  # the runs/ folder and output_dir itself, when the run made them
                if parent in self.existed or not parent.is_relative_to(self.root) or any(parent.iterdir()):
                    break
                parent.rmdir()


def remove_unheld_lock(path: Path) -> None:
    """Delete a lock file the run created and its holder note, unless another run holds the lock now. A lock this
    process still holds is its own, left by a Ctrl-C that landed in the lock's context manager itself: its note
    names this process (``pipeline.artifacts.store.file_lock`` writes ``pid <pid> on <host> since ...``)."""
    note = path.with_suffix(".holder")
    with contextlib.suppress(FileNotFoundError):
        if note.read_text().startswith(f"pid {os.getpid()} on {socket.gethostname()} "):
            note.unlink()
            path.unlink(missing_ok=True)
            return
    with contextlib.suppress(Timeout, OSError), FileLock(path).acquire(blocking=False):
        note.unlink(missing_ok=True)
        path.unlink()
