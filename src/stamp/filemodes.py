"""The permissions of files and folders that STAMP creates through temporary names (atomic writes)."""

from __future__ import annotations

import os


def new_file_mode() -> int:
    """The permissions a plainly created file gets here (0o666 less the umask). `tempfile.mkstemp`
    makes 0o600 files, which an atomic write would otherwise hand on to the user's outputs."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The permissions a plainly created folder gets here (0o777 less the umask; mkdtemp makes 0o700)."""
    return new_file_mode() | (0o111 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
