"""Compare optimizers with one protocol for all (the command line of adarem.protocol; --help;
installed as ``adarem-compare``). Runs the installed ``adarem`` package (``pip install -e .``, as
scripts/setup.sh does, makes it this checkout's)."""

from __future__ import annotations

from adarem.protocol import cli

__doc__ = cli.USAGE

if __name__ == "__main__":
    cli.run()
