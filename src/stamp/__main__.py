"""`python -m stamp ...`: the same as the `stamp` command."""

from stamp.cli import run_and_exit

if __name__ == "__main__":
    run_and_exit()
