"""Faults of the machine while writing (a full disk, a read-only or failing device): one line that says
what failed and what is safe, instead of a traceback.

Every writer of STAMP writes whole or not at all (a temporary file or folder renamed into place), so
when a write fails the message can say what the user still has:

    stamp segment: error: no space left on device while writing out/; nothing was written there, the
    earlier result is untouched
"""

from __future__ import annotations

import errno

REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.EFBIG: "file too large",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class WriteError(Exception):
    """A write that failed for a reason of the machine; its message is one line naming what failed and
    what is safe. `cause` is the OSError."""

    def __init__(self, message: str, cause: OSError | None = None):
        super().__init__(message)
        self.cause = cause


def is_fault(err: BaseException) -> bool:
    """Whether `err` is a fault of the machine while writing (not a user's existing or missing path,
    which the commands report as their own errors)."""
    return isinstance(err, OSError) and not isinstance(err, (FileExistsError, FileNotFoundError))


def describe(err: OSError) -> str:
    """The reason of an OSError in words: "no space left on device", "read-only file system", ..."""
    return REASONS.get(getattr(err, "errno", None), err.strerror or str(err) or type(err).__name__)
