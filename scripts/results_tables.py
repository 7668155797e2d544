"""Regenerate the README's result tables from the result JSON committed in benchmarks/results/.

    python scripts/results_tables.py            # rewrite README.md between the markers
    python scripts/results_tables.py --check    # exit 1 (and show the diff) if README.md is stale

A generated block sits between two markers in README.md::

    <!-- results:demo -->
    ... generated text; edit the run, not this ...
    <!-- /results:demo -->

and everything between them is replaced by what the table's adapter renders from its JSON file,
so a published figure cannot drift from the run that made it (tests/test_results_tables.py fails
when it does). Text outside the markers is never touched.

Adding a table: write ``def render_NAME(doc) -> str`` that reads the benchmark's JSON (``doc``,
already parsed) and returns Markdown, register it in ``TABLES`` with the JSON's path, put the
two markers where it goes in README.md, commit the JSON (``benchmarks/results/*.json`` is
tracked; keep files small, under ``MAX_JSON_BYTES``) and run this script. When a benchmark's JSON
format changes, only its adapter changes. Standard library only: no posterkg import.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_JSON_BYTES = 256 * 1024     # a committed result file must stay small (the test checks)

MARKER = re.compile(
    r"(?P<open><!-- results:(?P<name>[a-z0-9_-]+) -->\n)(?P<body>.*?)(?P<close><!-- /results:(?P=name) -->)",
    re.S)
OPENING = re.compile(r"<!-- results:([a-z0-9_-]+) -->")
CLOSING = re.compile(r"<!-- /results:([a-z0-9_-]+) -->")


class TablesError(Exception):
    """A marker without a table, a table without its JSON, an unclosed marker."""


@dataclasses.dataclass(frozen=True)
class Table:
    source: str                          # the JSON file, relative to the repository root
    render: Callable[[Any], str]         # parsed JSON -> Markdown (without the markers)


# -- formatting helpers the adapters share --------------------------------------------------------

def fmt(v: Any) -> str:
    """Numbers as posterkg's CLI tables print them (4 decimals, thousands separators)."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _numeric(s: str) -> bool:
    return bool(s) and s.replace(",", "").replace(".", "").replace("-", "").replace("%", "").isdigit()


def text_table(rows: list[list[Any]], headers: list[str], title: str | None = None) -> list[str]:
    """An aligned plain-text table, laid out like posterkg.clikit.print_table."""
    srows = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(headers, *srows)]
    out = [title] if title else []
    out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip()
            for r in srows]
    return out


def markdown_table(rows: list[list[Any]], headers: list[str]) -> list[str]:
    """A Markdown table (cells formatted with :func:`fmt`)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return out


# -- adapters: one per table -----------------------------------------------------------------------

def render_demo(doc: dict) -> str:
    """``posterkg demo --json``: the users table and the verdict, as the command prints them."""
    p = doc["params"]
    rows = [[r["horizon"], r["metric"], r["recovered"], r["chance"]] for r in doc["rows"]]
    lines = text_table(rows, ["horizon", "metric", "recovered", "chance"],
                       title=f"users: planted tastes vs. what the graph recovered ({doc['users']} users)")
    caption = (f"`{doc['command']}`: {p['n_users']} users, {p['n_movies']} movies, "
               f"{doc['seconds']:.0f} s from scratch on {doc['machine']['cpus']} shared CPU cores "
               f"(`benchmarks/results/demo.json`, {doc['created_at'][:10]}):")
    return "\n".join([caption, "", "```", *lines, "", doc["verdict"], "```"]) + "\n"


def _pm(row: dict, key: str) -> str:
    v, sd = row.get(key), row.get(key + "_std")
    if v is None:
        return ""
    return f"{v:.4f} ± {sd:.4f}" if row.get("seeds", 1) > 1 else f"{v:.4f}"


def render_accuracy(doc: dict) -> str:
    """``benchmarks/accuracy.py``: one row per model, the shipped fold-in column first, then the
    train-only, robustness, refit and continue (+ its robustness) NDCG@20 columns (empty where not
    run), best test NDCG@20 in bold."""
    rows = doc["summary"]
    best = max(r["ndcg@20"] for r in rows)
    out = []
    for r in rows:
        nd = _pm(r, "ndcg@20")
        out.append([f"`{r['model']}`", r["seeds"], _pm(r, "recall@10"), _pm(r, "recall@20"), _pm(r, "ndcg@10"),
                    f"**{nd}**" if r["ndcg@20"] == best else nd, f"{r['coverage@20']:.3f}",
                    _pm(r, "trainonly:ndcg@20"), _pm(r, "robust:ndcg@20"), _pm(r, "refit:ndcg@20"),
                    _pm(r, "continue:ndcg@20"), _pm(r, "continuerobust:ndcg@20"), f"{r['valid_ndcg@20']:.4f}",
                    f"{r['s_per_epoch']:.1f}", f"{r['epochs']:.0f}"])
    n = doc["runs"][0]["test"]["n_users"] if doc.get("runs") else 0
    lines = markdown_table(out, ["model", "seeds", "Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "Cov@20",
                                 "NDCG@20 train-only", "NDCG@20 robust", "NDCG@20 refit", "NDCG@20 continue",
                                 "continue robust", "valid NDCG@20",
                                 "s/epoch", "epochs"])
    caption = (f"`benchmarks/accuracy.py` (`{Path(doc.get('config', 'configs/ml1m.toml')).name}` settings), "
               f"test part, {n:,} evaluated users; mean ± std over the seeds; seconds per epoch on "
               f"{doc['machine']['cpus']} shared CPU cores (noisy):")
    return "\n".join([caption, "", *lines]) + "\n"


def render_multimodal(doc: dict) -> str:
    """``benchmarks/multimodal.py``: the temporal and the cold-start table, one row per movie-side
    setting, best test NDCG@20 of each split in bold."""
    p = doc["protocol"]
    out = []
    for split, title in (("temporal", "temporal split (the fixed protocol, test)"),
                         ("coldstart", "cold-start split (test: each user with a relevant cold movie "
                                       "ranks the cold test movies only)")):
        rows = doc["tables"].get(split) or []
        if not rows:
            continue
        best = max(r["ndcg@20"] for r in rows)
        body = []
        for r in rows:
            nd = _pm(r, "ndcg@20")
            body.append([r["row"], r["seeds"], _pm(r, "recall@10"), _pm(r, "recall@20"), _pm(r, "ndcg@10"),
                         f"**{nd}**" if r["ndcg@20"] == best else nd, f"{r['valid_ndcg@20']:.4f}",
                         f"{r['best_epoch']:.1f}/{r['epochs']:.1f}"])
        out += [f"{title}:", "", *markdown_table(body, ["movie side", "seeds", "Recall@10", "Recall@20", "NDCG@10",
                                                        "NDCG@20", "valid NDCG@20", "best/run epochs"]), ""]
    caps = ", ".join(f"{k} {v}" for k, v in p["epoch_cap"].items())
    caption = (f"`benchmarks/multimodal.py`, ML-1M cut, seeds {', '.join(str(s) for s in p['seeds'])}, mean ± std; "
               f"epoch caps: {caps} (early stopping on valid NDCG@20; on the cold-start split on the valid "
               f"part's cold movies):")
    return "\n".join([caption, "", *out]).rstrip("\n") + "\n"


TABLES: dict[str, Table] = {
    "demo": Table("benchmarks/results/demo.json", render_demo),
    "accuracy": Table("benchmarks/results/accuracy.json", render_accuracy),
    "multimodal": Table("benchmarks/results/multimodal.json", render_multimodal),
}


# -- the rewrite -----------------------------------------------------------------------------------

def _check_markers(text: str) -> None:
    opened, closed = OPENING.findall(text), CLOSING.findall(text)
    whole = [m.group("name") for m in MARKER.finditer(text)]
    for name in sorted(set(opened) | set(closed)):
        if opened.count(name) != closed.count(name) or whole.count(name) != opened.count(name):
            raise TablesError(f"marker results:{name} is not one opening and one closing comment, "
                              "each on its own line, in that order")
        if opened.count(name) > 1:
            raise TablesError(f"marker results:{name} appears more than once")


def render(text: str, repo: Path = REPO, tables: dict[str, Table] | None = None) -> str:
    """``text`` with every marked block replaced by its table, generated from its JSON."""
    tables = TABLES if tables is None else tables
    _check_markers(text)

    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in tables:
            raise TablesError(f"README marker results:{name} has no table in scripts/results_tables.py "
                              f"(known: {', '.join(sorted(tables))})")
        table = tables[name]
        path = repo / table.source
        if not path.is_file():
            raise TablesError(f"results:{name} needs {table.source}, which does not exist: run its "
                              "benchmark and commit the JSON")
        body = table.render(json.loads(path.read_text(encoding="utf-8")))
        note = (f"<!-- generated from {table.source} by `python scripts/results_tables.py`: "
                "edit the run, not this text -->\n")
        return m.group("open") + note + body + m.group("close")

    return MARKER.sub(block, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is stale")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    old = args.readme.read_text(encoding="utf-8")
    try:
        new = render(old, REPO)
    except TablesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    names = [m.group("name") for m in MARKER.finditer(old)]
    if new == old:
        print(f"{args.readme.name}: {len(names)} table(s) up to date ({', '.join(names) or 'none'})")
        return 0
    if args.check:
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   "README.md", "README.md (generated)"))
        print(f"\n{args.readme.name} is stale: run python scripts/results_tables.py", file=sys.stderr)
        return 1
    args.readme.write_text(new, encoding="utf-8")
    print(f"{args.readme.name}: rewrote {len(names)} table(s) ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
