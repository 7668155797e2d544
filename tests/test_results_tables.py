"""The README's result tables are what scripts/results_tables.py generates from the committed JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from script_loader import load_script

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


rt = load_script("scripts/results_tables.py")


def test_readme_tables_equal_the_committed_json():
    text = README.read_text(encoding="utf-8")
    names = [m.group("name") for m in rt.MARKER.finditer(text)]
    assert "demo" in names                                   # the markers have not been lost
    assert rt.render(text, REPO) == text, \
        "README.md result tables drifted from benchmarks/results/*.json: run python scripts/results_tables.py"


def test_every_table_source_is_committed_and_small():
    text = README.read_text(encoding="utf-8")
    sources = {rt.TABLES[m.group("name")].source for m in rt.MARKER.finditer(text)}
    for src in sources:
        path = REPO / src
        assert path.is_file() and path.stat().st_size <= rt.MAX_JSON_BYTES, src
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return
    tracked = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    for src in sources:   # not git-ignored, so it can be (and, in a clean checkout, is) committed
        ignored = subprocess.run(["git", "check-ignore", "-q", src], cwd=REPO).returncode == 0
        assert not ignored, f"{src} is git-ignored"
    for f in tracked:
        assert (REPO / f).stat().st_size <= rt.MAX_JSON_BYTES, f"{f} is too big to commit"
    assert subprocess.run(["git", "check-ignore", "-q", "benchmarks/results/accuracy.duckdb"],
                          cwd=REPO).returncode == 0      # databases stay out


def test_a_stale_figure_is_rewritten_and_check_mode_fails(tmp_path):
    """A figure edited by hand inside a block is replaced by the JSON's; --check catches it."""
    text = README.read_text(encoding="utf-8")
    doc = json.loads((REPO / rt.TABLES["demo"].source).read_text(encoding="utf-8"))
    model = next(r for r in doc["rows"] if r["horizon"] == "model")
    figure = f"{model['recovered']:.4f}"
    assert text.count(figure) == 1
    stale = text.replace(figure, "1.2327")
    assert rt.render(stale, REPO) == text
    readme = tmp_path / "README.md"
    readme.write_text(stale, encoding="utf-8")
    assert rt.main(["--check", "--readme", str(readme)]) == 1
    assert readme.read_text(encoding="utf-8") == stale        # --check never writes
    assert rt.main(["--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == text
    assert rt.main(["--check", "--readme", str(readme)]) == 0


def test_markers_from_a_hand_made_table(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"rows": [["a", 0.5], ["b", 1234.5]]}))
    tables = {"toy": rt.Table("r.json", lambda d: "\n".join(rt.markdown_table(d["rows"], ["x", "y"])) + "\n")}
    text = "intro\n<!-- results:toy -->\nold\n<!-- /results:toy -->\noutro\n"
    out = rt.render(text, tmp_path, tables)
    assert out == ("intro\n<!-- results:toy -->\n"
                   "<!-- generated from r.json by `python scripts/results_tables.py`: edit the run, not this text -->\n"
                   "| x | y |\n|---|---|\n| a | 0.5000 |\n| b | 1,234.5 |\n<!-- /results:toy -->\noutro\n")
    assert rt.render(out, tmp_path, tables) == out            # idempotent
    with pytest.raises(rt.TablesError, match="no table"):
        rt.render("<!-- results:nope -->\n<!-- /results:nope -->", tmp_path, tables)
    with pytest.raises(rt.TablesError, match="one opening and one closing"):
        rt.render("<!-- results:toy -->\nno end\n", tmp_path, tables)
    with pytest.raises(rt.TablesError, match="does not exist"):
        rt.render(text, tmp_path, {"toy": rt.Table("missing.json", lambda d: "")})
