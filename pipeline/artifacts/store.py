"""Content-addressed, atomically written stage outputs: the one artifact mechanism every stage uses.

An artifact lives at ``<output_dir>/artifacts/<stage>/<key>/``. Its ``key`` hashes the stage name, a digest of
the code that computes it (:func:`code_digest`), the settings that can change its result and the keys of its
inputs, so keys are known before anything runs. It is built in ``<key>.partial/`` and renamed into place together
with ``manifest.json`` once complete, so a killed run never leaves a half artifact where a reader would find it.

The manifest records each result file's size and sha256, a digest of the artifact's content and the content
digests of the upstream artifacts it read. An upstream recomputed under the same key with different content
(forced, nondeterministic or hand-edited) makes its dependents recompute (:meth:`ArtifactStore.is_current`).
Reading an artifact checks its files against the manifest (:class:`ArtifactStore` ``verify``): a damaged one is
recomputed where that is allowed and named in one line where it is not. Incidental files (checkpoints, training
logs, timings) differ between identical runs and are read by no dependent, so they are left out of the record
(:func:`incidental`): identical runs give identical digests. One lock file per artifact
(``<key>.lock``, a :mod:`filelock` lock) lets concurrent runs on one output folder wait for each other; the kernel
drops the lock of a killed run, and the next run takes it over, naming the run from the note it left
(``<key>.holder``).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from models.errors import ConfigError, InputError

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # code digests name files relative to it
log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
# 3 added per-file digests ("file_digests"); format 1 (before code and content digests) is ignored by listings
FORMAT = 3
VERIFY = ("content", "size")
INCIDENTAL_FOLDERS = ("checkpoints", "logs", "lightning_logs", "wandb")  # top-level folders of a work directory
TIMING = "timing.json"  # a stage's wall-clock figures: what its run cost, kept beside its record
INCIDENTAL_FILES = (TIMING, ".inputs.json")


def content_key(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@functools.cache
def source_digest(path: str) -> str:
    """The :func:`syntax_digest` of a project file."""
    return syntax_digest((PROJECT_ROOT / path).read_text())


def syntax_digest(source: str) -> str:
    """A digest of Python source's syntax tree without docstrings: comments, formatting and docs do not count."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:16]


def code_digest(paths: Iterable[str]) -> str:
    """The identity of the code that computes a stage's result (DVC-style code dependencies)."""
    return content_key({path: source_digest(path) for path in sorted(paths)})


def code_version() -> str:
    """The git commit, for the manifest's record only (keys use :func:`code_digest`)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary sibling and rename it into place: a reader sees the whole text or none of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def incidental(name: str) -> bool:
    """Whether a file records how a run went rather than what it computed: Lightning checkpoints (callback state,
    paths, times), training logs, wall-clock timings kept for the manifest's figures (``timing.json``) and the work
    directory's record of its inputs. They differ between identical runs and no dependent reads them, so they stay
    in the folder but not in its record or digest."""
    parts = Path(name).parts
    return (name.endswith(".ckpt") or parts[-1] in INCIDENTAL_FILES
            or (len(parts) > 1 and parts[0] in INCIDENTAL_FOLDERS))


def folder_files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every result file under ``folder``: not the manifest, nothing incidental."""
    found = {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    return {name: p.stat().st_size for name, p in found.items() if not incidental(name)}


def content_record(folder: Path, hash_file: Callable[[Path], str] = file_digest) -> dict[str, Any]:
    """The manifest's record of a folder's content: each result file's size (``files``) and sha256
    (``file_digests``), and the folder's ``digest`` over both paths and bytes."""
    files = folder_files(folder)
    hashes = {name: hash_file(folder / name) for name in files}
    return {"files": files, "file_digests": hashes, "digest": content_key(hashes)}


def folder_digest(folder: Path) -> str:
    """The content digest of a folder: every result file's path and bytes."""
    return content_record(folder)["digest"]


class MissingArtifactError(InputError):
    """An upstream artifact is absent and ``reuse_only`` forbids computing it."""


class DamagedArtifactError(InputError):
    """A file of a complete artifact is missing or differs from what its manifest records."""


@dataclass
class ArtifactSpec:
    stage: str
    code: str  # code_digest of the modules that compute the result
    settings: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # name -> upstream key
    labels: dict[str, Any] = field(default_factory=dict)  # descriptive, not part of the key (experiment name ...)

    @property
    def key(self) -> str:
        return content_key({"stage": self.stage, "code": self.code, "settings": self.settings,
                            "inputs": self.inputs})


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def figures(self) -> dict[str, Any]:
        return self.manifest.get("figures", {})


Inputs = dict[str, "Artifact | str | None"]  # name -> upstream artifact, a content digest, or None when absent


def digests(inputs: Inputs) -> dict[str, str]:
    return {name: value if isinstance(value, str) else value.digest for name, value in inputs.items()
            if value is not None}


class ArtifactStore:
    """The artifacts under ``<root>/artifacts``, checked against their manifests whenever they are read.

    ``verify="content"`` re-hashes every result file against the sha256 its manifest records, so an edit that keeps
    a file's size is found; ``verify="size"`` checks presence and sizes only, the cheap mode for multi-GB artifacts
    where a same-size edit goes unseen. A file is hashed once per store (one per invocation) while its inode, size
    and times stay the same; a new process hashes again.

    A ``read_only`` store (``stage=status``) recomputes nothing, so a damaged artifact is neither "recomputed" nor an
    error of a listing: it reads as absent, and :attr:`damaged` keeps it, whatever its stage, for the caller to
    report.
    """

    def __init__(self, root: str | Path, verify: str = "content", read_only: bool = False) -> None:
        if verify not in VERIFY:
            raise ConfigError("verify_artifacts", verify, f"allowed: {', '.join(VERIFY)}")
        self.root = Path(root) / "artifacts"
        self.verify = verify
        self.read_only = read_only
        self.damaged: dict[Path, DamagedArtifactError] = {}  # artifact folder -> its damage (read_only)
        self.hashed: dict[tuple[int, ...], str] = {}
        self.reported: set[str] = set()

    def path(self, spec: ArtifactSpec) -> Path:
        return self.root / spec.stage / spec.key

    def file_digest(self, path: Path) -> str:
        """:func:`file_digest`, remembered while the file is unchanged (same inode, size, mtime and ctime)."""
        stat = path.stat()
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if identity not in self.hashed:
            self.hashed[identity] = file_digest(path)
        return self.hashed[identity]

    def read(self, path: Path) -> Artifact:
        """The complete artifact at ``path``, its files checked; raises :class:`DamagedArtifactError`."""
        artifact = read_artifact(path)
        check_files(artifact, self.verify, self.file_digest)
        return artifact

    def load(self, spec: ArtifactSpec) -> Artifact | None:
        """The complete artifact, or None when it is absent or damaged: a damaged one is logged, naming the file,
        and the caller recomputes it as if it were absent."""
        path = self.path(spec)
        if not (path / MANIFEST).exists():
            return None
        try:
            return self.read(path)
        except DamagedArtifactError as damage:
            if self.read_only:
                self.damaged.setdefault(path, to_recompute(damage, spec.stage, path))
                return None
            if str(damage) not in self.reported:  # the same artifact is looked up again under its lock
                self.reported.add(str(damage))
                log.warning("%s %s: %s: %s; recomputing the artifact", spec.stage, spec.key, damage.path,
                            damage.problem)
            return None

    def all(self, stage: str, where: Callable[[Artifact], bool] | None = None) -> list[Artifact]:
        """Every complete artifact of a stage for which ``where`` holds (format 1 ones cannot be checked, so they
        are left out; their keys can never be asked for again anyway). ``where`` sees the manifest before the files
        are checked, so that artifacts a caller does not want cost no hashing.

        A listing cannot recompute what it finds, so a damaged artifact stops it with an error naming the file (a
        ``read_only`` store notes it and goes on).
        """
        found = []
        for manifest in sorted((self.root / stage).glob(f"*/{MANIFEST}")):
            if manifest.parent.name.endswith(".partial") or is_older_format(manifest):
                continue
            listed = read_artifact(manifest.parent)
            if where is not None and not where(listed):
                continue
            try:
                check_files(listed, self.verify, self.file_digest)
            except DamagedArtifactError as damage:
                if not self.read_only:
                    raise to_recompute(damage, stage, listed.path) from None
                self.damaged.setdefault(listed.path, to_recompute(damage, stage, listed.path))
                continue
            found.append(listed)
        return found

    def is_current(self, artifact: Artifact, inputs: Inputs) -> bool:
        """Whether ``artifact`` was computed from these upstream contents; logs why not. An absent upstream
        (None) cannot have changed and is not checked."""
        recorded = artifact.manifest.get("input_digests", {})
        for name, digest in digests(inputs).items():
            if recorded.get(name) != digest:
                log.info("%s %s: recomputing: its input %s changed since it was computed (content %s -> %s)",
                         artifact.manifest["stage"], artifact.key, name, recorded.get(name), digest)
                return False
        return True

    def materialize(self, spec: ArtifactSpec, compute: Callable[[Path], dict[str, Any]], force: bool = False,
                    inputs: Inputs | None = None) -> Artifact:
        """The complete, current artifact for ``spec``, computed with ``compute(work_dir) -> figures`` if needed.

        ``inputs`` are the upstream artifacts ``compute`` reads; their digests go into the manifest.
        """
        inputs = inputs or {}
        existing = self.load(spec)
        if existing is not None and not force and self.is_current(existing, inputs):
            log.info("%s %s: complete, reusing %s (nothing to compute)", spec.stage, spec.key, existing.path)
            return existing
        with self.lock(spec):
            finished = self.finished_elsewhere(spec, existing)
            if finished is not None and self.is_current(finished, inputs):
                log.info("%s %s: finished by another run, reusing %s", spec.stage, spec.key, finished.path)
                return finished
            work = self.begin(spec)
            self.check_partial(spec, work, inputs)
            log.info("%s %s: computing in %s", spec.stage, spec.key, work)
            began = time.time()
            figures = compute(work)
            return self.finalize(spec, figures, time.time() - began, inputs)

    def finished_elsewhere(self, spec: ArtifactSpec, seen: Artifact | None) -> Artifact | None:
        """The artifact another run (or array task) completed since ``seen`` was read, e.g. while waiting for a
        lock; None when there is none newer."""
        finished = self.load(spec)
        return finished if finished is not None and (seen is None or finished.manifest != seen.manifest) else None

    def check_partial(self, spec: ArtifactSpec, work: Path, inputs: Inputs) -> None:
        """Pieces left in ``work`` by a killed run (checkpoints) are resumed only if they came from the same
        upstream content; otherwise they are cleared."""
        record = work / ".inputs.json"
        wanted = digests(inputs)
        if record.exists() and json.loads(record.read_text() or "{}") != wanted:
            log.info("%s %s: clearing unfinished work computed from other inputs", spec.stage, spec.key)
            shutil.rmtree(work)
            work.mkdir(parents=True)
        write_json_atomic(record, wanted)

    def check_upstream(self, spec: ArtifactSpec, reuse_only: bool) -> Artifact | None:
        """The complete artifact, or None when it may be (re)computed; raises, naming the artifact or its damaged
        file, when ``reuse_only`` forbids that."""
        if not reuse_only:
            return self.load(spec)
        path = self.path(spec)
        if not (path / MANIFEST).exists():
            raise MissingArtifactError(
                path, f"the {spec.stage} artifact does not exist and reuse_only=true forbids computing it",
                f"run `stage={spec.stage}` first or drop reuse_only",
            )
        try:
            return self.read(path)
        except DamagedArtifactError as damage:
            raise DamagedArtifactError(damage.path, damage.problem,
                                       f"run `stage={spec.stage}` or drop reuse_only to recompute it") from None

    def lock(self, spec: ArtifactSpec, part: str = "") -> contextlib.AbstractContextManager[None]:
        """The lock of an artifact (``<key>.lock``) or of one part of it (``<key>.<part>.lock``), kept beside the
        artifact so that taking it never creates a work directory."""
        name = ".".join((spec.key, part, "lock") if part else (spec.key, "lock"))
        return file_lock(self.path(spec).with_name(name), f"{spec.stage} {spec.key}{' ' + part if part else ''}")

    def work_dir(self, spec: ArtifactSpec) -> Path:
        return self.path(spec).with_name(spec.key + ".partial")

    def begin(self, spec: ArtifactSpec) -> Path:
        """The work directory of an artifact under construction; earlier atomic pieces in it are kept."""
        work = self.work_dir(spec)
        work.mkdir(parents=True, exist_ok=True)
        return work

    def finalize(self, spec: ArtifactSpec, figures: dict[str, Any], seconds: float = 0.0,
                 inputs: Inputs | None = None) -> Artifact:
        """Write the manifest and rename the work directory into place in one step."""
        final = self.path(spec)
        work = final.with_name(spec.key + ".partial")
        (work / ".inputs.json").unlink(missing_ok=True)
        manifest = {
            "format": FORMAT, "stage": spec.stage, "key": spec.key, "code": spec.code, "settings": spec.settings,
            "inputs": spec.inputs, "input_digests": digests(inputs or {}), "labels": spec.labels,
            "figures": figures, "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "compute_seconds": round(seconds, 3), **content_record(work, self.file_digest),
        }
        write_json_atomic(work / MANIFEST, manifest)
        if final.exists():  # force: move the old one aside first so the swap stays atomic for readers
            trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(work, final)
        log.info("%s %s: written to %s", spec.stage, spec.key, final)
        return Artifact(final, manifest)


def to_recompute(damage: DamagedArtifactError, stage: str, artifact: Path) -> DamagedArtifactError:
    """The damage, with what to do where nothing recomputes it on its own."""
    return DamagedArtifactError(damage.path, damage.problem, f"rerun `stage={stage}` with the settings that made it "
                                                             f"to recompute it, or delete {artifact}")


def is_older_format(manifest: Path) -> bool:
    """A readable manifest of format 1 (it had a ``version`` and no ``format``)."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # damaged: read_artifact names it
    return isinstance(data, dict) and "format" not in data and "version" in data


REQUIRED = ("stage", "key", "digest", "files", "figures", "settings")


def read_artifact(path: Path) -> Artifact:
    """An artifact with its manifest parsed, its files not yet checked (:meth:`ArtifactStore.read` checks them).
    A manifest that cannot be read is an error, never a reason to recompute: it cannot say what the folder holds."""
    fix = f"delete {path} and rerun to recompute it"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path / MANIFEST, f"damaged manifest ({error})", fix) from error
    missing = [k for k in REQUIRED if k not in manifest] if isinstance(manifest, dict) else list(REQUIRED)
    if missing:
        raise InputError(path / MANIFEST, f"damaged manifest (missing {', '.join(missing)})", fix)
    return Artifact(path, manifest)


def check_files(artifact: Artifact, verify: str, hash_file: Callable[[Path], str]) -> None:
    """Raise :class:`DamagedArtifactError` naming the first file that is missing or not the size the manifest
    records and, with ``verify="content"``, whose sha256 differs from the recorded one.

    Manifests written before per-file digests (format 2, no ``file_digests``) are checked as a whole against their
    folder ``digest``, which covered the same files: an edit is still found, but only the folder can be named.
    """
    path, manifest = artifact.path, artifact.manifest
    fix = f"delete {path} and rerun to recompute it"
    for name, size in manifest["files"].items():
        file = path / name
        actual = file.stat().st_size if file.is_file() else None
        if actual != size:
            problem = "missing" if actual is None else f"{actual} bytes where the manifest records {size}"
            raise DamagedArtifactError(file, f"damaged artifact file ({problem})", fix)
    if verify != "content":
        return
    recorded = manifest.get("file_digests")
    if recorded is None:
        if content_key({name: hash_file(path / name) for name in manifest["files"]}) != manifest["digest"]:
            raise DamagedArtifactError(path, "damaged artifact (its content differs from the manifest's digest; "
                                             "this older manifest records no per-file digests to name the file)", fix)
        return
    for name in manifest["files"]:
        if hash_file(path / name) != recorded.get(name):
            raise DamagedArtifactError(path / name, "damaged artifact file (same size, but its sha256 differs from "
                                                    "the manifest's: changed after it was written)", fix)


GIVEN_BACK: list[FileLock] = []  # released lock objects, kept for the process's life (see file_lock)


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the exclusive lock ``path`` (waiting for another holder), naming the holder in a note beside it
    (``<name>.holder``: ``pid <pid> on <host> since <time>``) rather than in the lock file, which filelock may
    truncate on each try. The note goes before the lock does, so one found on taking the lock was left by a run that
    did not finish.

    A Ctrl-C may land anywhere, filelock's own code included (filelock rolls back an interrupted acquire and
    recovers an interrupted release). Giving the lock back is retried until it is done (:func:`give_back`); where
    the interrupt lands in the context manager's own entry or exit, the note still names this process, and the run's
    clean-up removes the lock by it. Released lock objects are kept (``GIVEN_BACK``, a few hundred bytes each)
    rather than collected: Python ignores an exception raised in a finalizer, so a Ctrl-C landing in filelock's
    ``__del__`` would be lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    note = path.with_suffix(".holder")
    lock = FileLock(path)
    waiting, previous = False, ""
    try:
        while True:
            with contextlib.suppress(Timeout):
                lock.acquire(blocking=False)
            if lock.is_locked:
                previous = lock_holder(note)
                since = time.strftime("%Y-%m-%dT%H:%M:%S")
                write_text_atomic(note, f"pid {os.getpid()} on {socket.gethostname()} since {since}")
                break
            if not waiting:
                log.info("%s: another run (%s) is computing it; waiting", what, lock_holder(note) or "?")
                waiting = True
            time.sleep(0.05)
        if previous:
            log.warning("%s: taking over the lock of a run that did not finish (%s)", what, previous)
        yield
    finally:
        GIVEN_BACK.append(lock)  # first: give_back may raise the Ctrl-C it deferred
        give_back(lock, note)


def give_back(lock: FileLock, note: Path) -> None:
    """Remove the holder's note and release the lock, again if a Ctrl-C cuts it short; the interrupt is raised
    once the lock is free."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            if lock.is_locked:
                note.unlink(missing_ok=True)
                lock.release()
            break
        except KeyboardInterrupt as caught:
            interrupted = caught
    if interrupted is not None:
        raise interrupted


def lock_holder(note: Path) -> str:
    """The run a lock's note names; empty when there is no note."""
    with contextlib.suppress(FileNotFoundError):
        return note.read_text().strip()
    return ""


def atomic_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Build a directory in a temporary sibling and rename it to ``target``: complete or absent."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
