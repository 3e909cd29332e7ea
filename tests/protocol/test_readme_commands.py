"""The README's commands are ones the tools accept."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_make_tables_never_writes_into_a_compare_report():
    """make_tables refuses an --out holding compare.py's report (adarem/cli/tables.py): the README's
    make_tables commands must not name the folder a README compare.py command reports into
    (results/<experiment>, results/digits_small_cnn by default), or a user following it gets exit 2."""
    text = README.read_text(encoding="utf-8")
    compare_outs = {"results/digits_small_cnn"}
    for line in re.findall(r"scripts/compare\.py[^\n]*", text):
        explicit = re.search(r"\bout=(\S+)", line)
        exp = re.search(r"\bexperiment=(\w+)", line)
        if explicit:
            compare_outs.add(explicit.group(1).rstrip("/"))
        elif exp:
            compare_outs.add(f"results/{exp.group(1)}")
    outs = [o.rstrip("/") for o in re.findall(r"scripts/make_tables\.py[^\n]*?--out (\S+)", text)]
    assert outs, "the README shows make_tables with --out"
    assert not set(outs) & compare_outs, (set(outs) & compare_outs)
