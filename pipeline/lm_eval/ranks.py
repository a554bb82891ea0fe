"""Data parallelism for the ``learn2pd`` model: one process per device under ``torchrun`` or ``accelerate launch``.

lm-eval splits a task's documents by rank itself (every ``world_size``-th document from ``rank``) and gathers their
metrics through the model's ``all_gather``, ``gather_object`` and ``barrier`` (``lm_eval.api.model.LM``): the model
only has to join the launcher's process group and answer them, as lm-eval's HF model does through accelerate. The
launcher's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) says whether there
is a group; on GPUs each process takes the GPU of its local rank and the group talks NCCL, on CPU gloo.

To keep ranks in step lm-eval pads a rank with fewer requests with copies of its last one
(``evaluator.evaluate``: ``padding_requests``); :func:`padding` finds them so they are neither decoded nor counted.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False  # whether this process set up the group (and so takes it down)

    def device(self, device: torch.device) -> torch.device:
        """A rank's own GPU where the run asked for CUDA; CPU stays CPU."""
        if self.world_size == 1 or device.type != "cuda":
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor, concatenated in rank order (a number becomes one entry per rank)."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        flat = tensor.reshape(-1)
        parts = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(parts, flat)
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's object, in rank order, on ``dst``; None elsewhere."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)  # gather_object needs each rank's GPU under NCCL; this does not
        return gathered if self.rank == dst else None

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def leave(self) -> None:
        """Take down the group this process set up (the launcher waits for every rank to exit cleanly)."""
        if self.joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def launched() -> bool:
    """Whether this process is one of a launcher's several (``WORLD_SIZE`` above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join() -> Ranks:
    """The launcher's process group, joined; a single process (no ``WORLD_SIZE`` above 1) has none."""
    if not launched():
        return Ranks()
    import torch.distributed as dist

    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), joined)


def run_as_rank(main: Callable[[], None]) -> NoReturn:
    """Run ``main`` as one of a launcher's processes, and end the process without the interpreter's shutdown.

    With every output written and the group taken down, a gloo process could still abort while the interpreter
    finalized (``terminate called without an active exception``, SIGABRT, no Python frame left; about one
    two-process run in twelve on a loaded 2-core machine), and the launcher then failed the run although every
    rank had finished. So a rank ends with ``os._exit`` and the command's own status, after flushing its streams
    and log handlers; no C++ destructor runs after that.
    """
    status = 0
    try:
        main()
    except SystemExit as end:
        if isinstance(end.code, str):
            print(end.code, file=sys.stderr)
        status = end.code if isinstance(end.code, int) else 0 if end.code is None else 1
    except BaseException:  # what the interpreter would print for an uncaught error, with its status
        traceback.print_exc()
        status = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def padding(requests: list, world_size: int) -> int:
    """How many of ``requests`` are lm-eval's padding: the copies of the last request beyond its own repeats."""
    if world_size == 1 or not requests:
        return 0
    last, run = requests[-1], 0
    for request in reversed(requests):
        if request is not last:
            break
        run += 1
    return max(0, run - int(getattr(last, "repeats", 1) or 1))
