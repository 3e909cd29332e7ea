"""Whether two records of the code a run was trained with (``adarem.run.record.git_info``, a
run.json's ``git``) name the same code. Torch-free: compare.py's report imports it."""

from __future__ import annotations


def same_code(a: dict, b: dict) -> bool:
    """Whether two ``git_info()`` records name the same code: one commit, both clean, or both
    changed by the same uncommitted changes. A changed tree whose diff hash could not be taken
    (``diff_sha1`` null) is the same as nothing: its changes are unknown."""
    if not a.get("commit") or a.get("commit") != b.get("commit") or bool(a.get("dirty")) != bool(b.get("dirty")):
        return False
    return not a.get("dirty") or (a.get("diff_sha1") is not None and a.get("diff_sha1") == b.get("diff_sha1"))
