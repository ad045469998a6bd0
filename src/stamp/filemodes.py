"""The permissions of files and folders that STAMP creates through temporary names (atomic writes) or
through libraries that pick their own (safetensors: 0o600)."""

from __future__ import annotations

import os


def new_file_mode() -> int:
    """The permissions a plainly created file gets here (0o666 less the umask). `tempfile.mkstemp`
    makes 0o600 files, which an atomic write would otherwise hand on to the user's outputs."""
    return 0o666 & ~_umask()


def new_dir_mode() -> int:
    """The permissions a plainly created folder gets here (0o777 less the umask; mkdtemp makes 0o700)."""
    return new_file_mode() | (0o111 & ~_umask())


def plain_modes(folder: str | os.PathLike) -> None:
    """Give every file under `folder` `new_file_mode()` and every folder in it `new_dir_mode()`: for what
    libraries write with their own modes (safetensors writes 0o600 weights), so a saved model or
    checkpoint follows the user's umask like the other files."""
    os.chmod(folder, new_dir_mode())
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), new_dir_mode())
        for name in files:
            os.chmod(os.path.join(root, name), new_file_mode())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
