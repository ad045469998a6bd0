"""The one error type the data package raises for bad inputs."""

from __future__ import annotations


class DataError(ValueError):
    """A data set that cannot be used as given: wrong root, missing split or image, corrupt annotation.

    The message is one line and names the offending path.
    """
