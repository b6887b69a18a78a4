"""The artifact store: files under ``{home}/artifacts/{job_id}/`` that cannot escape it.

Names are relative POSIX paths (``out/a.txt``). A name is refused when it, or any
percent-decoding of it, is absolute, climbs out with ``..``, or holds a backslash or NUL —
so ``../x``, ``/etc/passwd``, ``%2e%2e/x`` and ``%252e%252e%252fx`` all fail the same way.
The name itself is kept as given (never decoded), so a file really called ``100%.txt``
keeps its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import mimetypes
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from orchestrator.errors import ArtifactConflict, ArtifactNotFound, ParamError, UnsafePath
from orchestrator.job import Artifact

_DECODE_ROUNDS = 3  # refuse doubly and triply encoded traversal too
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_NAME = 1024  # UTF-8 bytes of a whole name
MAX_NAME_PART = 255  # UTF-8 bytes of one path component: what file systems take


def _unsafe(text: str) -> bool:
    if not text or "\x00" in text or "\\" in text:
        return True
    p = PurePosixPath(text)
    return p.is_absolute() or not p.parts or ".." in p.parts


def safe_name(name: str) -> PurePosixPath:
    """``name`` as a normalised relative path, or UnsafePath if any decoding of it escapes
    (400), or ParamError (422, field ``name``) if it is longer than a file system takes."""
    try:
        whole = len(name.encode())
    except UnicodeEncodeError:  # a lone surrogate: no file can be named so
        raise ParamError("name", "an artifact name is UTF-8 text") from None
    if whole > MAX_NAME:
        raise ParamError("name", f"an artifact name has at most {MAX_NAME} bytes, got {whole}")
    for part in name.split("/"):
        size = len(part.encode())
        if size > MAX_NAME_PART:
            raise ParamError(
                "name",
                f"each part of an artifact name has at most {MAX_NAME_PART} bytes "
                f"({part[:20]!r}… has {size})",
            )
    variant = name
    for _ in range(_DECODE_ROUNDS + 1):
        if _unsafe(variant):
            raise UnsafePath(f"unsafe artifact name {name!r}")
        decoded = unquote(variant)
        if decoded == variant:
            break
        variant = decoded
    return PurePosixPath(name)


def content_type_of(name: str) -> str:
    return mimetypes.guess_type(PurePosixPath(name).name)[0] or "application/octet-stream"


class ArtifactStore:
    """Stores, finds and removes one job's artifact files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def job_dir(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id or ""):
            raise UnsafePath(f"bad job id {job_id!r}")
        return self.root / job_id

    def path(self, job_id: str, name: str) -> Path:
        """The stored file for ``name``; raises UnsafePath or ArtifactNotFound."""
        rel = safe_name(name)
        base = self.job_dir(job_id).resolve()
        target = (base / rel).resolve()
        # resolve() follows symlinks, so a link planted inside the folder cannot leak out.
        if not target.is_relative_to(base):
            raise UnsafePath(f"unsafe artifact name {name!r}")
        if not target.is_file():
            raise ArtifactNotFound(f"job {job_id} has no artifact {name!r}")
        return target

    def save(self, job_id: str, name: str, source: Path) -> Artifact:
        """Copy ``source`` in as ``name``; returns its size, sha256 and content type.

        The copy lands under a temporary name and is renamed into place, so a reader never
        sees half a file.
        """
        rel = safe_name(name)
        dest = self.job_dir(job_id) / rel
        digest = hashlib.sha256()
        size = 0
        try:
            with source.open("rb") as src, atomic_file(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except (NotADirectoryError, IsADirectoryError, FileExistsError):
            # "a" and "a/b" cannot both be files: one of them would have to be a folder.
            raise ArtifactConflict(
                f"artifact {rel.as_posix()!r} collides with another artifact of job "
                f"{job_id}: one name is a folder of the other"
            ) from None
        return Artifact(
            name=rel.as_posix(),
            size=size,
            sha256=digest.hexdigest(),
            content_type=content_type_of(rel.name),
        )

    def files(self, job_id: str) -> list[str]:
        """Names of the files stored for ``job_id`` (sorted)."""
        d = self.job_dir(job_id)
        if not d.is_dir():
            return []
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())

    def delete_job(self, job_id: str) -> int:
        """Remove a job's artifacts; returns the number of files removed."""
        d = self.job_dir(job_id)
        if not d.exists():
            return 0
        n = sum(1 for p in d.rglob("*") if p.is_file())
        shutil.rmtree(d)
        return n


@contextlib.contextmanager
def atomic_file(dest: Path, mode: str = "w") -> Iterator[Any]:
    """Write ``dest`` through a temporary file beside it, renamed into place only when the
    block ends without an error: a partial file never takes its place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # (A short prefix: a name of 255 bytes plus the temporary suffix would be too long.)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:40]}.", suffix=".part")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
