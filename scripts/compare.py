"""Compare optimizers with one protocol for all (the command line of adarem.protocol; --help)."""

from __future__ import annotations

import sys
from pathlib import Path

# this checkout's package first, also where another checkout's is installed in the interpreter
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adarem.protocol import cli  # noqa: E402

__doc__ = cli.USAGE

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
