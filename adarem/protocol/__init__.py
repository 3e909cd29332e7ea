"""The comparison protocol (scripts/compare.py): the search space and its extension
(``search``), the trials' dispatch on this machine or as SLURM job arrays through submitit
(``dispatch``), the stage loop and command line (``cli``; ``main(argv)`` is the entry point) and
the report's provenance and selection sections (``report``). The protocol only makes train.py
overrides and reads run records; it never reaches into a running job."""

from adarem.protocol.cli import main

__all__ = ["main"]
