"""``posterkg ingest movielens``, ``posterkg download`` and ``posterkg posters scan|fetch``."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table


@click.group()
@common_options
def ingest() -> None:
    """Load data into the database.

    \b
    Examples:
      posterkg ingest movielens ../shared/data/ml-1m --posters ../shared/data/ml-1m/posters
      posterkg --db ml25m.duckdb ingest movielens data/ml-25m
    """


@ingest.command()
@common_options
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--posters", "posters_dir", type=click.Path(exists=True, file_okay=False),
              help="Folder of {movie_id}.jpg posters to scan after the ratings.")
@click.option("--full-scan", is_flag=True, help="Re-check every poster, not only new or changed files.")
@click.option("--show-errors", type=int, default=10, show_default=True,
              help="How many malformed lines to print (all are in table ingest_errors).")
@pass_env
def movielens(env: Env, src: str, posters_dir: str | None, full_scan: bool, show_errors: int) -> None:
    """Load a MovieLens release from SRC (layout detected from the files).

    \b
    Layouts:
      ML-100K                 u.data, u.item, u.user
      ML-1M (and ML-10M)      ratings.dat, movies.dat, users.dat  ('::', Latin-1 or UTF-8)
      ML-20M/25M/32M/latest   ratings.csv, movies.csv, links.csv
    SRC may also be a folder holding exactly one of these (where a zip was extracted).

    Writes movies, users, ratings, links (replacing them: running twice gives the same tables)
    and ingest_errors with every malformed or invalid line; the first ones are printed with
    their line numbers. With --posters, the folder is scanned too (see `posterkg posters scan`).

    \b
    Example:
      posterkg ingest movielens ../shared/data/ml-1m --posters ../shared/data/ml-1m/posters
    """
    from posterkg.ingest.movielens import ingest_movielens
    from posterkg.ingest.posters import scan_posters
    from posterkg.ingest.stage import IngestConfig

    with env.store() as store:
        summary = ingest_movielens(store, src, report=show_errors)
        for line in summary.lines():
            click.echo(line)
        if posters_dir:
            cap = env.config.section("ingest", IngestConfig).max_pixels
            for line in scan_posters(store, posters_dir, full=full_scan, max_pixels=cap).lines():
                click.echo(line)


@click.command()
@click.argument("release", type=click.Choice(["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
                                              "ml-latest-small", "ml-latest", "model"]))
@click.argument("model_id", required=False)
@click.option("--dir", "dest", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the zip is saved and extracted.")
@click.option("--no-extract", is_flag=True, help="Keep the zip only.")
@click.option("--retries", default=5, show_default=True, help="Retries (resuming) after a dropped connection.")
@click.option("--base-url", default=None, help="Mirror of files.grouplens.org/datasets/movielens.")
@click.option("--md5", default=None, help="Expected MD5 (default: the published one).")
@click.option("--max-bytes", type=click.IntRange(min=1), default=None,
              help="Refuse a file bigger than this [default: 2,000,000,000].")
@click.option("--deadline", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds the whole file may take, retries included [default: 3600].")
def download(release: str, model_id: str | None, dest: str, no_extract: bool, retries: int,
             base_url: str | None, md5: str | None, max_bytes: int | None, deadline: float | None) -> None:
    """Download a MovieLens release from GroupLens, or model weights (needs internet).

    The download resumes where it stopped (HTTP Range) if interrupted, the MD5 is checked
    against the published one, and the zip is extracted into --dir.

    `posterkg download model ID` fetches model weights (e.g. the [embed] model
    BAAI/bge-small-en-v1.5) into the Hugging Face hub's own cache, which every HF tool shares:
    it is the only command that downloads weights, every stage loads local files only.

    \b
    Examples:
      posterkg download ml-1m --dir data
      posterkg ingest movielens data/ml-1m
      posterkg download model BAAI/bge-small-en-v1.5
    """
    if release == "model":
        from posterkg.embed.encoder import download_model

        if not model_id:
            raise click.UsageError("give the model: posterkg download model BAAI/bge-small-en-v1.5")
        click.echo(f"{model_id}: {download_model(model_id)}")
        return
    if model_id:
        raise click.UsageError(f"unexpected extra argument {model_id!r} (only `download model ID` takes one)")
    from posterkg.ingest.download import BASE_URL, DEADLINE, MAX_BYTES, download_release

    res = download_release(release, dest, base_url=base_url or BASE_URL, md5=md5, extract=not no_extract,
                           retries=retries, max_bytes=max_bytes or MAX_BYTES, deadline=deadline or DEADLINE)
    how = "already downloaded" if res.skipped else (
        f"resumed at byte(s) {', '.join(f'{o:,}' for o in res.resumed_at)}" if res.resumed_at else "downloaded")
    which = "the checksum given with --md5" if res.given else "the published checksum"
    click.echo(f"{res.zip_path}: {how}; MD5 {res.md5} "
               + (f"matches {which}" if res.checked else "(no published checksum to compare)"))
    if res.folder:
        click.echo(f"extracted to {res.folder}; next: posterkg ingest movielens {res.folder}")


@click.group()
@common_options
def posters() -> None:
    """Scan a poster folder, or fetch missing posters over HTTP.

    \b
    Examples:
      posterkg posters scan ../shared/data/ml-1m/posters
      POSTERKG_TMDB_KEY=... posterkg posters fetch --dir data/posters
      posterkg posters fetch --dir data/posters --url-template 'http://mirror/{movie_id}.jpg'
      posterkg posters fetch --dir data/posters --retry-failed
    """


@posters.command()
@common_options
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--full", is_flag=True, help="Re-check every file, not only new or changed ones.")
@click.option("--max-pixels", type=click.IntRange(min=0), default=None,
              help="Pixel cap per poster; bigger ones get status too_large [default: [ingest] max_pixels, 25,000,000].")
@click.option("--follow-symlinks", is_flag=True,
              help="Also read symlinks that point out of FOLDER (by default they are ignored).")
@pass_env
def scan(env: Env, folder: str, full: bool, max_pixels: int | None, follow_symlinks: bool) -> None:
    """Open and verify every {movie_id}.jpg in FOLDER; update table posters.

    Each image is fully decoded with Pillow; corrupt or unreadable files get that status and the
    reason in posters.error, and the scan goes on. Rows of files that are gone are removed.

    \b
    Example:
      posterkg posters scan ../shared/data/ml-1m/posters && posterkg info
    """
    from posterkg.ingest.posters import movies_with_bad_poster, scan_posters
    from posterkg.ingest.stage import IngestConfig

    cap = max_pixels if max_pixels is not None else env.config.section("ingest", IngestConfig).max_pixels
    with env.store() as store:
        for line in scan_posters(store, folder, full=full, max_pixels=cap,
                                 follow_symlinks=follow_symlinks).lines():
            click.echo(line)
        bad = movies_with_bad_poster(store)
        if bad:
            print_table([(str(m), t, s, e) for m, t, s, e in bad[:20]], ["movie_id", "title", "status", "error"],
                        title=f"{len(bad):,} unusable poster(s):")


@posters.command()
@common_options
@click.option("--dir", "folder", type=click.Path(file_okay=False),
              help="Poster folder [default: [fetch] dir, else [ingest] posters].")
@click.option("--url-template", help="e.g. 'http://host/{movie_id}.jpg' ({tmdb_id}, {imdb_id} also work).")
@click.option("--tmdb-key", help="TMDB API key or v4 token [default: $POSTERKG_TMDB_KEY, then [fetch] tmdb_key].")
@click.option("--size", help="TMDB image size [w342].")
@click.option("--concurrency", type=int, help="Parallel downloads [8].")
@click.option("--retries", type=int, help="Retries per request on 5xx/429/timeouts [3].")
@click.option("--backoff", type=float, help="First retry delay in seconds, doubled each time [1.0].")
@click.option("--timeout", type=float, help="Per-request timeout in seconds [30].")
@click.option("--max-bytes", type=click.IntRange(min=1), help="Byte cap per poster [20,000,000].")
@click.option("--deadline", type=float, help="Seconds one poster may take in all [120].")
@click.option("--retry-failed", is_flag=True, help="Only the movies in table poster_fetch_failures.")
@click.option("--limit", type=int, help="At most this many movies.")
@click.option("--movie", "movies", type=int, multiple=True, help="Only this movie (repeatable).")
@pass_env
def fetch(env: Env, folder: str | None, tmdb_key: str | None, retry_failed: bool, limit: int | None,
          movies: tuple[int, ...], **flags) -> None:
    """Download posters of movies that have none yet.

    From a URL template, or from TMDB via links.csv (ML-20M and later). Failures are recorded
    in table poster_fetch_failures (reason, HTTP status, attempts): later runs skip them, and
    --retry-failed tries them again. Settings: [fetch] section of --config; flags override.

    \b
    Examples:
      export POSTERKG_TMDB_KEY=...        # TMDB v3 key or v4 token; needs links.csv (ML-20M+)
      posterkg posters fetch --dir data/ml-25m/posters --concurrency 16
      posterkg posters fetch --dir posters --url-template 'http://mirror/{movie_id}.jpg'
      posterkg posters fetch --dir posters --retry-failed
      posterkg posters scan posters       # then re-check the whole folder
    """
    from posterkg.errors import ConfigError
    from posterkg.ingest.fetch import FetchConfig, fetch_posters
    from posterkg.ingest.stage import IngestConfig

    env.config.override("fetch", dir=folder, **flags)
    cfg = env.config.section("fetch", FetchConfig)
    target = cfg.dir or env.config.section("ingest", IngestConfig).posters
    if not target:
        raise ConfigError("posters fetch needs a folder: --dir, [fetch] dir or [ingest] posters")
    with env.store() as store:
        summary = fetch_posters(store, cfg, target, tmdb_key=tmdb_key, retry_failed=retry_failed,
                                limit=limit, movies=list(movies) or None)
    for line in summary.lines():
        click.echo(line)
