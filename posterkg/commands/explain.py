"""``posterkg explain``, ``profile``, ``similar`` and ``report``: why a movie is recommended, what
a user's visual taste looks like, which movies are alike, and a self-contained HTML page of it."""

from __future__ import annotations

import json

import click

from posterkg.clikit import Env, common_options, pass_env, print_table
from posterkg.errors import ConfigError


def _quiet() -> None:
    """PyG's CSR constructor warns on every sparse operator the GNN builds; not for users."""
    import warnings

    warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")


def _cfg(env: Env, **overrides):
    from posterkg.explain import ExplainConfig

    env.config.override("explain", **overrides)
    return env.config.section("explain", ExplainConfig)


def _model(store, cfg, graph_only: bool = False):
    from posterkg.explain.model import load_scorer

    _quiet()
    if graph_only or cfg.method == "graph":
        return None, None, "graph-only weights (asked for)"
    return load_scorer(store, cfg.model_id)


def refusal(store, user_id: int | None, movie_id: int | None = None) -> str | None:
    """Why ``explain`` (or a user page) must not answer, or ``None``: an unknown user, an unknown
    movie, or a movie the user already rated (outside the held-out test part), which is excluded
    from the user's recommendations, so there is no reason to invent."""
    def has(table: str) -> bool:
        return store.table_exists(table)

    if user_id is not None and has("users") and has("ratings"):
        known = store.scalar("SELECT count(*) FROM users WHERE user_id = ?", [user_id]) or \
            store.scalar("SELECT count(*) FROM ratings WHERE user_id = ?", [user_id])
        if not known:
            return f"user {user_id} is not in the database (no such user in table users or ratings)"
    if movie_id is not None and has("movies"):
        title = store.scalar("SELECT title FROM movies WHERE movie_id = ?", [movie_id])
        if title is None:
            return f"movie {movie_id} is not in the database (no such movie in table movies)"
        if user_id is not None and has("ratings"):
            rating = store.scalar("SELECT rating FROM ratings WHERE user_id = ? AND movie_id = ?",
                                  [user_id, movie_id])
            part = store.scalar("SELECT part FROM split WHERE user_id = ? AND movie_id = ?",
                                [user_id, movie_id]) if has("split") else None
            if rating is not None and part != "test":
                where = f" (in the {part} part)" if part else ""
                return (f"user {user_id} already rated movie {movie_id} ({title}) {rating:g} of 5{where}; "
                        "rated movies are excluded from the user's recommendations, so there is no "
                        "recommendation to explain")
    return None


model_option = click.option("--model-id", default=None, help="Model to use [default: the newest trained one].")
interests_option = click.option(
    "--interests", default=None,
    help="Stored interests to cite: auto (the graph's own, else the latest stats run), off, a backend "
         "or a run id [default: [explain] interests, auto].")


def _interest_rows(items, n_examples: int):
    return [(it.horizon, it.polarity, it.concept, it.ctype, f"{it.confidence:g}", it.backend,
             "; ".join(t for _, t in it.evidence[:n_examples])) for it in items]


@click.command()
@common_options
@click.option("--user", "user_id", type=int, required=True, help="User id.")
@click.option("--movie", "movie_id", type=int, required=True, help="Movie id.")
@click.option("--method", type=click.Choice(["gradient", "occlusion", "graph"]), default=None,
              help="How paths are weighted [default: gradient, from [explain] method].")
@click.option("--top", "top_paths", type=int, default=None, help="Paths to list [default: 8].")
@click.option("--json", "as_json", is_flag=True, help="Print the whole explanation as JSON.")
@model_option
@interests_option
@pass_env
def explain(env: Env, user_id: int, movie_id: int, method, top_paths, as_json: bool, model_id,
            interests) -> None:
    """Explain why MOVIE is (or is not) recommended to USER, by concept paths.

    Paths are user -> concept -> movie (the user's long/short-term preferences) and
    user -> liked movie -> concept -> movie, weighted by gradient x input of the model's score
    w.r.t. the edges (occlusion or graph weights as fallbacks). Example:

    \b
      posterkg explain --user 42 --movie 1196
      posterkg explain --user 42 --movie 1196 --method occlusion --top 12
      posterkg explain --user 42 --movie 1196 --json > why.json
    """
    from posterkg.explain.paths import Explainer, Knowledge

    from posterkg.errors import InputError

    cfg = _cfg(env, method=method, top_paths=top_paths, model_id=model_id, interests=interests)
    with env.store(read_only=True) as store:
        why_not = refusal(store, user_id, movie_id)
        if why_not:
            raise InputError(why_not)
        model, mid, note = _model(store, cfg)
        ex = Explainer(Knowledge(store, cfg.interests), model, cfg).explain(user_id, movie_id)
    if as_json:
        click.echo(json.dumps(ex.to_dict(), indent=2, default=str))
        return
    head = f"user {user_id} / movie {movie_id}: {ex.title}"
    if ex.score is not None:
        head += f"  (score {ex.score:.4f}, model {mid})"
    click.echo(head)
    for s in ex.sentences:
        click.echo(f"  {s}")
    click.echo(f"weights: {ex.method}" + (f" ({ex.note or note})" if (ex.note or note) else ""))
    click.echo("")
    print_table([(p.kind, p.concept, p.ctype, p.horizon or "", p.via_title or "", "yes" if p.recent else "",
                  round(p.weight, 4)) for p in ex.paths[: cfg.top_paths]],
                ["path", "concept", "type", "horizon", "via movie", "recent", "weight"], title="Strongest paths")
    click.echo("")
    print_table([(e.concept, e.ctype, round(e.relevance, 4), round(e.movie_edge, 4), round(e.pref_long, 3),
                  round(e.pref_short, 3), len(e.liked), len(e.disliked)) for e in ex.concepts],
                ["concept", "type", "relevance", "movie edge", "pref long", "pref short", "liked", "disliked"],
                title="The movie's concepts")
    if ex.interest_source:
        cited = [it for e in ex.cited + ex.against for it in e.interests]
        click.echo("")
        click.echo(f"interests: {ex.interest_source}")
        if cited:
            print_table(_interest_rows(cited, cfg.examples),
                        ["horizon", "polarity", "concept", "type", "confidence", "backend", "evidence"],
                        title="Interests cited (concepts the model's attribution cites)")
        if ex.context_interests:
            click.echo("")
            print_table(_interest_rows(ex.context_interests[: cfg.top_paths], cfg.examples),
                        ["horizon", "polarity", "concept", "type", "confidence", "backend", "evidence"],
                        title="Profile context, not reasons: your other interests in this movie's "
                              "concepts (the explanation does not cite them)")


@click.command()
@common_options
@click.option("--user", "user_id", type=int, required=True, help="User id.")
@click.option("--top", type=int, default=5, show_default=True, help="Concepts shown per knowledge type.")
@interests_option
@pass_env
def profile(env: Env, user_id: int, top: int, interests) -> None:
    """A user's visual profile: concept shares per knowledge type, long vs short term.

    Shares are the user's positive preference scores (table user_prefs, or the stored interests
    when the graph was built from them) normalised within each knowledge type; the short term is
    the user's last [graph] short_n ratings. Then the user's stored interests (table
    user_interests) per knowledge type and horizon, with their evidence movies. Example:

    \b
      posterkg profile --user 42
      posterkg profile --user 42 --top 10
    """
    from posterkg.explain.paths import Knowledge
    from posterkg.explain.profile import user_profile

    from posterkg.errors import InputError

    cfg = _cfg(env, interests=interests)
    with env.store(read_only=True) as store:
        why_not = refusal(store, user_id)
        if why_not:
            raise InputError(why_not)
        p = user_profile(Knowledge(store, cfg.interests), user_id, cfg, top=top)
    click.echo(f"user {user_id} (from {p.source})")
    for ctype, g in p.by_type(top).items():
        click.echo("")
        print_table([(r.concept, f"{r.long_share:.0%}", f"{r.short_share:.0%}",
                      f"{r.short_share - r.long_share:+.0%}") for r in g.itertuples()],
                    ["concept", "long", "short", "change"], title=ctype)
    click.echo("")
    for line in p.summary():
        click.echo(line)
    if p.interest_source:
        click.echo("")
        click.echo(f"Interests ({p.interest_source}):" + ("" if p.interests else " none stored for this user"))
        for ctype, groups in p.interests_by_type(top).items():
            click.echo("")
            print_table([(h, pol, it.concept, f"{it.confidence:g}", "; ".join(t for _, t in it.evidence[: cfg.examples]))
                         for (h, pol), items in groups.items() for it in items],
                        ["horizon", "polarity", "concept", "confidence", "evidence"], title=ctype)


@click.command()
@common_options
@click.option("--movie", "movie_id", type=int, required=True, help="Movie id.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Neighbours to list.")
@click.option("--graph-only", is_flag=True, help="Compare poster concepts instead of learned embeddings.")
@model_option
@pass_env
def similar(env: Env, movie_id: int, k: int, graph_only: bool, model_id) -> None:
    """Movies similar to MOVIE (cosine of the learned movie embeddings), with shared concepts.

    Without a trained model (or with --graph-only) movies are compared by their poster concepts.
    Example:

    \b
      posterkg similar --movie 2571 -k 10
    """
    from posterkg.explain.paths import Knowledge
    from posterkg.explain.similar import Similar

    cfg = _cfg(env, model_id=model_id)
    with env.store(read_only=True) as store:
        k_ = Knowledge(store)
        model, mid, note = _model(store, cfg, graph_only)
        sim = Similar(k_, model)
        rows = sim.neighbours(movie_id, k)
    click.echo(f"movie {movie_id}: {k_.title(movie_id)}  (by {'model ' + str(mid) if model else 'poster concepts'})")
    if note and not graph_only:
        click.echo(f"note: {note}")
    print_table([(i + 1, n.movie_id, n.title, round(n.similarity, 4),
                  ", ".join(name for _, name, _, _ in n.shared[:4])) for i, n in enumerate(rows)],
                ["#", "movie", "title", "similarity", "shared concepts"])


@click.command()
@common_options
@click.option("--user", "user_id", type=int, default=None, help="Write the page of this user.")
@click.option("--movie", "movie_id", type=int, default=None, help="Write the page of this movie.")
@click.option("--out", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="Output HTML file.")
@click.option("-k", "k", type=int, default=None, help="Recommendations (user page) or similar movies (movie page).")
@click.option("--method", type=click.Choice(["gradient", "occlusion", "graph"]), default=None,
              help="How the reasons' paths are weighted.")
@model_option
@interests_option
@pass_env
def report(env: Env, user_id, movie_id, out: str, k, method, model_id, interests) -> None:
    """Write one self-contained HTML page (posters embedded, no network, no JavaScript).

    A user page shows the visual profile chart, the recommendations with their reasons and the
    posters the user liked recently; a movie page shows its knowledge points and similar movies.
    Example:

    \b
      posterkg report --user 42 --out report.html
      posterkg report --movie 2571 --out matrix.html
    """
    from posterkg.explain.paths import Knowledge
    from posterkg.explain.report import movie_report, user_report, write_report

    if (user_id is None) == (movie_id is None):
        raise ConfigError("give exactly one of --user or --movie")
    over = {"report_k": k} if user_id is not None else {"similar_k": k}
    cfg = _cfg(env, method=method, model_id=model_id, interests=interests, **over)
    with env.store(read_only=True) as store:
        why_not = refusal(store, user_id, movie_id if user_id is None else None)
        if why_not:
            from posterkg.errors import InputError

            raise InputError(why_not)
        model, mid, note = _model(store, cfg)
        kn = Knowledge(store, cfg.interests)
        if user_id is not None:
            html = user_report(store, user_id, model, cfg, knowledge=kn, model_id=mid)
        else:
            html = movie_report(store, movie_id, model, cfg, knowledge=kn)
    p = write_report(html, out)
    click.echo(f"wrote {p} ({p.stat().st_size / 1024:.0f} KiB)" + (f"; {note}" if note else ""))
