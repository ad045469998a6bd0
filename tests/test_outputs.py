"""Atomic output writes: complete files only, and the permissions any plainly created file would get."""

import os

from stamp.bench.report import write_json
from stamp.io.outputs import atomic_write_bytes, new_file_mode


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "mask.png", b"png")
        write_json({"a": 1}, tmp_path / "bench.json")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    want = plain.stat().st_mode & 0o777
    assert want == 0o644
    for name in ("mask.png", "bench.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name  # not mkstemp's 0o600
    assert (tmp_path / "mask.png").read_bytes() == b"png"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_new_file_mode_follows_the_umask():
    old = os.umask(0o077)
    try:
        assert new_file_mode() == 0o600
    finally:
        os.umask(old)


def test_new_dir_mode_is_what_mkdir_gives(tmp_path):
    from stamp.io.modes import new_dir_mode

    old = os.umask(0o022)
    try:
        (tmp_path / "plain").mkdir()
        assert new_dir_mode() == (tmp_path / "plain").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)
