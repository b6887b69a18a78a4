"""The artifact store on a real folder: sha256, safe names, symlinks, removal."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from orchestrator.artifacts import ArtifactStore, safe_name
from orchestrator.errors import ArtifactNotFound, UnsafePath

UNSAFE = [
    "../x",
    "../../etc/passwd",
    "out/../../x",
    "/etc/passwd",
    "..",
    ".",
    "",
    "%2e%2e/x",
    "%2E%2E%2Fx",
    "..%2fx",
    "%2fetc%2fpasswd",
    "%252e%252e%252fx",  # double-encoded
    "%25252e%25252e%25252fx",  # triple-encoded
    "a\\..\\b",
    "a\x00b",
]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafePath):
        safe_name(name)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("a.txt", "a.txt"),
        ("out/a.txt", "out/a.txt"),
        ("./out//a.txt", "out/a.txt"),
        ("100%.txt", "100%.txt"),
        ("a%20b.txt", "a%20b.txt"),
        ("..a", "..a"),
    ],
)
def test_safe_names_are_kept_literally(name: str, expected: str) -> None:
    assert safe_name(name).as_posix() == expected


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / "src" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_save_records_sha256_size_and_content_type(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    data = b'{"ok": true}\n' * 1000
    art = store.save("job1", "out/report.json", _file(tmp_path, "r.json", data))
    assert art.name == "out/report.json"
    assert art.size == len(data)
    assert art.sha256 == hashlib.sha256(data).hexdigest()
    assert art.content_type == "application/json"
    path = store.path("job1", "out/report.json")
    assert path.read_bytes() == data
    assert path.is_relative_to((tmp_path / "artifacts" / "job1").resolve())
    # No temporary file is left beside it.
    assert store.files("job1") == ["out/report.json"]


def test_unknown_types_are_octet_stream(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    art = store.save("job1", "blob.weird-ext", _file(tmp_path, "b", b"\x00\x01"))
    assert art.content_type == "application/octet-stream"


def test_save_refuses_unsafe_names_and_writes_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    src = _file(tmp_path, "x", b"x")
    for name in ("../escape.txt", "/tmp/escape.txt", "%2e%2e/escape.txt"):
        with pytest.raises(UnsafePath):
            store.save("job1", name, src)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "artifacts").exists() or store.files("job1") == []


def test_path_refuses_traversal_to_a_real_file_of_another_job(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    store.save("other", "secret.txt", _file(tmp_path, "s", b"secret"))
    store.save("job1", "a.txt", _file(tmp_path, "a", b"a"))
    for name in (
        "../other/secret.txt",
        "..%2fother%2fsecret.txt",
        "%252e%252e%252fother%252fsecret.txt",
        str((tmp_path / "artifacts" / "other" / "secret.txt").resolve()),
    ):
        with pytest.raises(UnsafePath):
            store.path("job1", name)


def test_path_refuses_a_symlink_that_leads_out(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    store.save("job1", "a.txt", _file(tmp_path, "a", b"a"))
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, tmp_path / "artifacts" / "job1" / "link.txt")
    with pytest.raises(UnsafePath):
        store.path("job1", "link.txt")


def test_missing_artifact_and_bad_job_ids(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(ArtifactNotFound):
        store.path("job1", "nope.txt")
    for bad in ("..", ".", "", "a/b", "/abs"):
        with pytest.raises(UnsafePath):
            store.job_dir(bad)


def test_delete_job_counts_and_removes_files(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    store.save("job1", "out/a.txt", _file(tmp_path, "a", b"a"))
    store.save("job1", "out/b.txt", _file(tmp_path, "b", b"b"))
    store.save("job2", "c.txt", _file(tmp_path, "c", b"c"))
    assert store.delete_job("job1") == 2
    assert not (tmp_path / "artifacts" / "job1").exists()
    assert store.files("job2") == ["c.txt"]
    assert store.delete_job("job1") == 0
