"""``posterkg graph build|export|stats``."""

from __future__ import annotations

import json
import time

import click

from posterkg.clikit import Env, common_options, pass_env, print_table


@click.group()
def graph() -> None:
    """Build, export and describe the knowledge graphs.

    \b
    Three graphs, stored as DuckDB tables and fused by the trainer:
      user_movie_edges     train ratings, signed +1 (>= 4) / 0 (3) / -1 (<= 2), with timestamps
      movie_concept_edges  poster concepts of each movie, typed and weighted
      user_prefs           user -> concept preferences, long and short term, + and -

    \b
    Examples:
      posterkg graph build
      posterkg graph build --half-life-days 90 --short-n 10
      posterkg graph stats
      posterkg graph export --format graphml --out runs/graph.graphml
      posterkg graph export --format neo4j --out runs/neo4j && sh runs/neo4j/import.sh
    """


@graph.command()
@common_options
@click.option("--half-life-days", type=float, help="Long-term time decay half-life [180].")
@click.option("--short-n", type=int, help="Short-term window: the last N train interactions [20].")
@click.option("--smoothing", type=float, help="Prior strength (pseudo-interactions) [5].")
@click.option("--min-support", type=int, help="Least liked+disliked movies with a concept [1].")
@click.option("--top-k", type=int, help="Most positive and most negative preferences kept per user "
              "and horizon; 0 keeps all [32].")
@click.option("--vocab-version", type=int, help="Concept vocabulary version [newest].")
@pass_env
def build(env: Env, **flags) -> None:
    """Rebuild the edge tables from the split and the concept vocabulary.

    Reads ratings + split (train part only), movie_concepts + concepts; writes
    user_movie_edges, movie_concept_edges and user_prefs (replacing them). Settings come from
    the [graph] section of --config; flags override them. See docs/graphs.md for the formula.
    """
    from posterkg.graphs import build_graphs

    env.config.override("graph", **flags)
    t0 = time.perf_counter()
    with env.store() as store:
        counts = build_graphs(store, env.config)
    print_table(list(counts.items()), ["table", "rows"])
    click.echo(f"built in {time.perf_counter() - t0:.1f}s")


@graph.command()
@common_options
@click.option("--format", "fmt", type=click.Choice(["graphml", "neo4j"]), required=True,
              help="graphml: one file (networkx); neo4j: a folder of admin-import CSVs.")
@click.option("--out", type=click.Path(), required=True,
              help="Output file (graphml) or folder (neo4j).")
@click.option("--horizon", type=click.Choice(["long", "short", "both"]), default="both",
              show_default=True, help="Which user preferences to include.")
@click.option("--max-users", type=int, default=0, show_default=True,
              help="Only the first N users (by id) with train edges; 0 = all.")
@pass_env
def export(env: Env, fmt: str, out: str, horizon: str, max_users: int) -> None:
    """Write the stored graph as GraphML or as Neo4j admin-import CSVs.

    \b
    Examples:
      posterkg graph export --format graphml --out graph.graphml --max-users 200
      posterkg graph export --format neo4j --out neo4j/
      NEO4J_HOME=~/neo4j sh neo4j/import.sh     # into a new, empty database
    """
    from posterkg.graphs.export import export_graphml, export_neo4j

    with env.store(read_only=True) as store:
        if fmt == "graphml":
            res = export_graphml(store, out, horizon=horizon, max_users=max_users)
            click.echo(f"wrote {res['path']}: {res['nodes']:,} nodes, {res['edges']:,} edges")
        else:
            counts = export_neo4j(store, out, horizon=horizon, max_users=max_users)
            print_table(list(counts.items()), ["file", "rows"], title=f"wrote {out}/")
            click.echo(f"import with: NEO4J_HOME=/path/to/neo4j sh {out}/import.sh")


@graph.command()
@common_options
@click.option("--top", type=int, default=10, show_default=True,
              help="How many of the most liked concepts to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@pass_env
def stats(env: Env, top: int, as_json: bool) -> None:
    """Node and edge counts, degrees and the most liked concepts of the stored graphs."""
    from posterkg.graphs.stats import graph_stats

    with env.store(read_only=True) as store:
        s = graph_stats(store, top=top)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    print_table(list(s["nodes"].items()), ["nodes", "count"])
    click.echo()
    print_table(list(s["edges"].items()), ["edges", "count"])
    click.echo()
    print_table([(k, v["mean"], v["median"], v["max"]) for k, v in s["degrees"].items()],
                ["degree", "mean", "median", "max"])
    click.echo()
    print_table(list(s["concepts_by_type"].items()), ["knowledge type", "concepts"])
    if s["long_short_jaccard"] is not None:
        click.echo(f"\nlong vs short term liked concepts, mean Jaccard: {s['long_short_jaccard']:.3f}")
    click.echo()
    print_table([(c["concept_id"], c["name"], c["likers"], c["dislikers"], c["mean_score"])
                 for c in s["top_concepts"]],
                ["concept", "name", "likers", "dislikers", "mean score"],
                title="most liked concepts (long term)")
