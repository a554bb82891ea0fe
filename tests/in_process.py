"""A command line run in the test's own process, as ``python -m MODULE ARGS`` would run it in a new one.

A new interpreter spends 4-14 s of CPU importing torch, transformers and Lightning before the command does
anything; the suite runs a few hundred commands, so that import was most of its time. Here the command runs through
the same ``__main__`` (``runpy``) with the process state a new interpreter starts with, and the state is put back
after it: ``sys.argv``, the environment, the working folder, the logging handlers, the warnings filters, torch's
thread count and Hydra's global state. Its stdout and stderr are captured from ``sys.stdout``/``sys.stderr``
(what the command writes through Python: its logs, progress bars, the one-line errors), and its exit status is the
``SystemExit`` it ends with. What needs a real process (a signal, a kill, the output of a child process written to
the inherited descriptors, the imports a refusal does not make) starts one: ``run_cli(..., fresh_interpreter=True)``.
"""

from __future__ import annotations

import io
import logging
import os
import runpy
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import torch

# A new interpreter's warnings filters (``python -W`` unset): deprecations shown only when raised in ``__main__``.
NEW_INTERPRETER_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, None),
                           ("ignore", PendingDeprecationWarning, None), ("ignore", ImportWarning, None),
                           ("ignore", ResourceWarning, None)]


def write_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python's own ``showwarning``, to the ``sys.stderr`` of the moment (pytest replaces it with a recorder)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextmanager
def fresh_process_state(module: str, args: tuple[str, ...], cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """The state a new ``python -m module args`` starts with, for the duration; everything put back after."""
    from hydra.core.global_hydra import GlobalHydra

    saved_argv, saved_env, saved_cwd = sys.argv[:], dict(os.environ), os.getcwd()
    saved_threads = torch.get_num_threads()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    for handler in saved_handlers:  # pytest's capture handlers: a new process has none
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [module, *args]
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for action, category, where in reversed(NEW_INTERPRETER_FILTERS):
                warnings.filterwarnings(action, category=category, module=where or "")
            warnings.showwarning = write_warning
            yield
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:  # the command's own handlers (Hydra's console and log file)
            root.removeHandler(handler)
            handler.close()
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        torch.set_num_threads(saved_threads)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv


def exit_status(code: object, stderr: io.StringIO) -> int:
    """The status ``sys.exit(code)`` gives a process: None is 0, a message is printed and is 1."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=stderr)
    return 1


def run_in_process(module: str, args: tuple[str, ...], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m module args`` run here; returns what ``subprocess.run(..., capture_output=True)`` would."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with fresh_process_state(module, args, cwd, env), redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exit:
            status = exit_status(exit.code, stderr)
        except Exception:  # an uncaught error ends a process with its traceback and status 1
            traceback.print_exc(file=stderr)
            status = 1
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], status, stdout.getvalue(),
                                       stderr.getvalue())
