"""Content-addressed, atomically written stage outputs: the one artifact mechanism every stage uses.

An artifact lives at ``<output_dir>/artifacts/<stage>/<key>/``; ``key`` hashes the stage name, its version, the
settings that can change its result and the keys of its inputs. It is built in ``<key>.partial/`` and renamed
into place together with ``manifest.json`` once complete, so a killed run never leaves a half artifact where a
reader would find it. A complete artifact is reused unless ``force`` is set. Work inside ``.partial`` that is
itself written atomically (shards) survives a kill and is picked up by the rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def content_key(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def code_version() -> str:
    from pipeline.config import PROJECT_ROOT

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class MissingArtifactError(RuntimeError):
    """An upstream artifact is absent and ``reuse_only`` forbids computing it."""


@dataclass
class ArtifactSpec:
    stage: str
    version: int
    settings: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # name -> upstream key
    labels: dict[str, Any] = field(default_factory=dict)  # descriptive, not part of the key (experiment name ...)

    @property
    def key(self) -> str:
        return content_key({"stage": self.stage, "version": self.version, "settings": self.settings,
                            "inputs": self.inputs})


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def figures(self) -> dict[str, Any]:
        return self.manifest.get("figures", {})


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root) / "artifacts"

    def path(self, spec: ArtifactSpec) -> Path:
        return self.root / spec.stage / spec.key

    def load(self, spec: ArtifactSpec) -> Artifact | None:
        path = self.path(spec)
        if (path / MANIFEST).exists():
            return Artifact(path, json.loads((path / MANIFEST).read_text()))
        return None

    def all(self, stage: str) -> list[Artifact]:
        """Every complete artifact of a stage."""
        found = []
        for manifest in sorted((self.root / stage).glob(f"*/{MANIFEST}")):
            if not manifest.parent.name.endswith(".partial"):
                found.append(Artifact(manifest.parent, json.loads(manifest.read_text())))
        return found

    def materialize(self, spec: ArtifactSpec, compute: Callable[[Path], dict[str, Any]], force: bool = False
                    ) -> Artifact:
        """Return the complete artifact for ``spec``, computing it with ``compute(work_dir) -> figures`` if needed."""
        existing = self.load(spec)
        if existing is not None and not force:
            log.info("%s %s: complete, reusing %s (nothing to compute)", spec.stage, spec.key, existing.path)
            return existing
        work = self.begin(spec)
        log.info("%s %s: computing in %s", spec.stage, spec.key, work)
        began = time.time()
        figures = compute(work)
        return self.finalize(spec, figures, time.time() - began)

    def check_upstream(self, spec: ArtifactSpec, reuse_only: bool) -> Artifact | None:
        """The complete artifact, or None when it may be computed; raises when ``reuse_only`` forbids that."""
        existing = self.load(spec)
        if existing is None and reuse_only:
            raise MissingArtifactError(
                f"{spec.stage} artifact {spec.key} does not exist under {self.root / spec.stage} and reuse_only=true "
                f"forbids computing it; run `stage={spec.stage}` first or drop reuse_only"
            )
        return existing

    def begin(self, spec: ArtifactSpec) -> Path:
        """The work directory of an artifact under construction; earlier atomic pieces in it are kept."""
        work = self.path(spec).with_name(spec.key + ".partial")
        work.mkdir(parents=True, exist_ok=True)
        return work

    def finalize(self, spec: ArtifactSpec, figures: dict[str, Any], seconds: float = 0.0) -> Artifact:
        """Write the manifest and rename the work directory into place in one step."""
        final = self.path(spec)
        work = final.with_name(spec.key + ".partial")
        manifest = {
            "stage": spec.stage, "key": spec.key, "version": spec.version, "settings": spec.settings,
            "inputs": spec.inputs, "labels": spec.labels, "figures": figures, "code_version": code_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "compute_seconds": round(seconds, 3),
            "files": sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()),
        }
        write_json_atomic(work / MANIFEST, manifest)
        if final.exists():  # force: move the old one aside first so the swap stays atomic for readers
            trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(work, final)
        log.info("%s %s: written to %s", spec.stage, spec.key, final)
        return Artifact(final, manifest)


def atomic_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Build a directory in a temporary sibling and rename it to ``target``: complete or absent."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
