"""Load the refer toolkit's `refs(*).p` pickles without ever executing code from them.

The files are pickled lists of plain dicts, lists, strings and numbers, which need no globals at all.
`load_plain_pickle` therefore refuses every global lookup: a pickle that asks for `os.system`,
`builtins.eval` or any class is rejected before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from stamp.data.errors import DataError


class UnsafePickleError(DataError):
    """A pickle that asks for a global (a function or class); it is refused, never executed."""


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that resolves no globals, so no callable can ever be reached."""

    source = "<bytes>"

    def find_class(self, module: str, name: str) -> Any:  # Overwritten -- refuse every global.
        raise UnsafePickleError(
            f"refusing to unpickle {self.source}: it references {module}.{name}; "
            "only plain lists/dicts/strings/numbers are allowed"
        )


def loads_plain_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data` that may only contain plain containers and scalars (no globals)."""
    unpickler = _PlainUnpickler(io.BytesIO(data), encoding="utf-8", errors="replace")
    unpickler.source = source
    try:
        return unpickler.load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or garbage file: every unpickling failure is a data error
        raise DataError(f"corrupt pickle {source}: {type(exc).__name__}: {exc}") from None


def load_plain_pickle(path: str | Path) -> Any:
    """Read a pickle file of plain data (e.g. `refs(unc).p`), refusing any global reference.

    Raises:
        DataError: the file is missing or corrupt.
        UnsafePickleError: the pickle references a function or class (possible code execution).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pickle file not found: {path}")
    return loads_plain_pickle(path.read_bytes(), source=str(path))
