"""`python -m stamp ...`: the same as the `stamp` command."""

from stamp.cli import _exit, main

if __name__ == "__main__":
    _exit(main())
