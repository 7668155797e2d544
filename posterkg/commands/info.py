"""``posterkg info``: what is in the database."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table

CORE_TABLES = ["movies", "users", "ratings", "links", "posters", "split", "ingest_errors",
               "poster_fetch_failures"]


@click.command()
@common_options
@click.option("--all-tables", is_flag=True, help="Count every table, not only the core ones.")
@click.option("--missing", "show_missing", type=int, default=50, show_default=True,
              help="List at most this many movies without a poster (0: none).")
@pass_env
def info(env: Env, all_tables: bool, show_missing: int) -> None:
    """Table counts, poster coverage, movies without a poster and split sizes.

    Opens the database read-only (it fails with a clear message while another process writes).

    \b
    Example:
      posterkg --db runs/ml1m.duckdb info
    """
    from posterkg.ingest.posters import movies_with_bad_poster, movies_without_poster
    from posterkg.split import split_sizes

    with env.store(read_only=True) as store:
        click.echo(f"database {store.path}")
        names = CORE_TABLES
        if all_tables:
            names = [r[0] for r in store.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                "ORDER BY 1").fetchall()]
        rows = [(t, store.count(t)) for t in names if store.table_exists(t)]
        print_table(rows, ["table", "rows"])

        n_movies = store.count("movies")
        if n_movies and store.table_exists("posters"):
            status = dict(store.execute(
                "SELECT p.status, count(*) FROM posters p SEMI JOIN movies m USING (movie_id) GROUP BY 1"
            ).fetchall())
            missing = movies_without_poster(store)
            click.echo("")
            cov = [(s, n, f"{100 * n / n_movies:.1f}%") for s, n in sorted(status.items())]
            cov.append(("no poster", len(missing), f"{100 * len(missing) / n_movies:.1f}%"))
            print_table(cov, ["poster", "movies", "share"], title=f"poster coverage of {n_movies:,} movies")
            if missing and show_missing:
                click.echo("")
                print_table([(str(m), t) for m, t in missing[:show_missing]], ["movie_id", "title"],
                            title=f"{len(missing):,} movie(s) without a poster:")
                if len(missing) > show_missing:
                    click.echo(f"... and {len(missing) - show_missing:,} more")
            bad = movies_with_bad_poster(store)
            if bad:
                click.echo("")
                print_table([(str(m), t, s, (e or "")[:60]) for m, t, s, e in bad[:20]],
                            ["movie_id", "title", "status", "error"],
                            title=f"{len(bad):,} movie(s) with an unusable poster:")
        elif n_movies:
            click.echo("\nno posters scanned yet: posterkg posters scan DIR")

        sizes = split_sizes(store)
        if sizes:
            scheme = store.execute("SELECT scheme, valid, test, seed, users, dropped_users FROM split_info "
                                   "ORDER BY created_at DESC LIMIT 1").fetchone()
            total = sum(sizes.values())
            click.echo("")
            title = "split"
            if scheme:
                title = (f"split {scheme[0]} (valid={scheme[1]}, test={scheme[2]}, seed={scheme[3]}): "
                         f"{scheme[4]:,} users, {scheme[5]:,} dropped")
            print_table([(p, n, f"{100 * n / total:.1f}%") for p, n in sizes.items()],
                        ["part", "ratings", "share"], title=title)
        n_err = store.count("ingest_errors")
        if n_err:
            click.echo(f"\n{n_err:,} malformed line(s) in the last ingest: SELECT * FROM ingest_errors")
