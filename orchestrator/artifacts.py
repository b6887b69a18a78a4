"""The artifact store: files under ``{home}/artifacts/{job_id}/`` that cannot escape it."""

from __future__ import annotations

import hashlib
import mimetypes
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from orchestrator.errors import ArtifactNotFound, UnsafePath
from orchestrator.job import Artifact


def _safe_relative(name: str) -> PurePosixPath:
    """A relative, normalised artifact name, or UnsafePath."""
    decoded = name
    for _ in range(3):  # refuse doubly/triply encoded traversal too
        decoded = unquote(decoded)
    if "\x00" in decoded or "\\" in decoded:
        raise UnsafePath(f"unsafe artifact name {name!r}")
    p = PurePosixPath(decoded)
    if p.is_absolute() or not p.parts or any(part in ("..", ".", "") for part in p.parts):
        raise UnsafePath(f"unsafe artifact name {name!r}")
    return p


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id in (".", ".."):
            raise UnsafePath(f"bad job id {job_id!r}")
        return self.root / job_id

    def path(self, job_id: str, name: str) -> Path:
        """The stored file for ``name``; raises UnsafePath or ArtifactNotFound."""
        base = self.job_dir(job_id).resolve()
        target = (base / _safe_relative(name)).resolve()
        if not target.is_relative_to(base):
            raise UnsafePath(f"unsafe artifact name {name!r}")
        if not target.is_file():
            raise ArtifactNotFound(f"job {job_id} has no artifact {name!r}")
        return target

    def save(self, job_id: str, name: str, source: Path) -> Artifact:
        rel = _safe_relative(name)
        dest = self.job_dir(job_id) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        with source.open("rb") as src, dest.open("wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        ctype = mimetypes.guess_type(rel.name)[0] or "application/octet-stream"
        return Artifact(name=rel.as_posix(), size=size, sha256=digest.hexdigest(),
                        content_type=ctype)

    def delete_job(self, job_id: str) -> int:
        """Remove a job's artifacts; returns the number of files removed."""
        d = self.job_dir(job_id)
        if not d.exists():
            return 0
        n = sum(1 for p in d.rglob("*") if p.is_file())
        shutil.rmtree(d, ignore_errors=True)
        return n
