"""Get the data on a fresh machine: the ingest stage's fallback when ``[ingest] source`` is absent.

Resolution order (:func:`resolve`, no side effects):

1. ``[ingest] source`` is a folder (e.g. ``../shared/data/ml-1m``): use it, with ``[ingest] posters``;
2. else ``fallback_dir`` (default ``data/<download>``) already holds a MovieLens folder (a previous
   download, or a copy put there by hand): use it, with ``<fallback_dir>/posters`` unless the
   configured poster folder exists;
3. else, when ``download`` names a release: :func:`bootstrap` downloads it into the parent of
   ``fallback_dir`` with :func:`posterkg.ingest.download.download_release` (resumable, MD5-checked,
   extracted). A short probe of the server comes first, so with no network the run fails within
   seconds with one message saying which command fetches the data and where to put a copy;
4. else: the same message, without trying.

Posters: when the configured poster folder is absent, posters go to ``<fallback_dir>/posters``
and, when ``posters_url`` is set (a ``{movie_id}``/``{tmdb_id}``/``{imdb_id}`` template, or
``"tmdb"`` for the TMDB API with ``$POSTERKG_TMDB_KEY``), the missing ones are fetched by
:func:`posterkg.ingest.fetch.fetch_posters` after the movies are ingested (resumable: only movies
without a file and without a recorded failure are tried).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from posterkg.errors import InputError


@dataclasses.dataclass
class Resolved:
    source: Path | None        # the MovieLens folder to ingest; None: must be downloaded first
    posters: Path | None       # the poster folder (may not exist yet); None: no posters
    fetch_posters: bool        # posters are to be fetched into ``posters`` (it is the fallback one)
    fallback: Path | None      # where a download goes / was found


def fallback_dir(cfg) -> Path | None:
    if cfg.fallback_dir:
        return Path(cfg.fallback_dir)
    if cfg.download:
        return Path("data") / cfg.download
    return None


def _is_movielens(folder: Path) -> bool:
    from posterkg.ingest.movielens import detect_layout

    try:
        detect_layout(folder)
        return True
    except InputError:
        return False


def resolve(cfg) -> Resolved:
    """Where the data is, or will be after :func:`bootstrap` (see the module docstring)."""
    configured_posters = Path(cfg.posters) if cfg.posters else None
    source = Path(cfg.source) if cfg.source else None
    if source is not None and source.is_dir():
        return Resolved(source, configured_posters, False, fallback_dir(cfg))
    fb = fallback_dir(cfg)
    if configured_posters is not None and configured_posters.is_dir():
        posters, fetch = configured_posters, False
    elif configured_posters is None and not cfg.posters_url:
        posters, fetch = None, False
    else:
        posters, fetch = (fb / "posters" if fb else None), bool(cfg.posters_url)
    if fb is not None and fb.is_dir() and _is_movielens(fb):
        return Resolved(fb, posters, fetch, fb)
    return Resolved(None, posters, fetch, fb)


def missing_message(cfg, reason: str = "") -> str:
    fb = fallback_dir(cfg) or Path("data") / "ml-1m"
    release = cfg.download or "ml-1m"
    where = list(dict.fromkeys(str(p) for p in (cfg.source, fb) if p))
    msg = ("MovieLens data not found: " + (f"neither {where[0]} nor {where[1]} is" if len(where) == 2
                                            else f"{where[0]} is not") + " a MovieLens folder")
    if reason:
        msg += f", and {reason}"
    return (msg + f". Fetch it with `posterkg download {release} --dir {fb.parent}` (needs network), "
            f"or put a local copy of the MovieLens folder at {fb} (or set [ingest] source).")


def probe(url: str, timeout: float = 5.0) -> str | None:
    """One quick request to ``url``; None when the server answers 200/206, else the reason."""
    import requests

    try:
        with requests.get(url, stream=True, timeout=(timeout, timeout),
                          headers={"Range": "bytes=0-0", "User-Agent": "posterkg"}) as r:
            if r.status_code in (200, 206):
                return None
            return f"{url} answered HTTP {r.status_code}"
    except requests.RequestException as exc:
        return f"{url} could not be reached ({type(exc).__name__})"


def bootstrap(store, cfg) -> tuple[Resolved, list[str]]:
    """Make the data present (download when needed); return where it is and lines to print."""
    from posterkg.ingest.download import BASE_URL, DownloadError, download_release

    res = resolve(cfg)
    lines: list[str] = []
    if res.source is None:
        if not cfg.download:
            raise InputError(missing_message(cfg, "[ingest] download is not set"))
        fb = res.fallback
        base = (cfg.download_url or BASE_URL).rstrip("/")
        url = f"{base}/{cfg.download}.zip"
        why = probe(url, timeout=cfg.probe_timeout)
        if why:
            raise InputError(missing_message(cfg, f"downloading {cfg.download} failed: {why}"))
        lines.append(f"{cfg.source or '[ingest] source'} is absent: downloading {cfg.download} "
                     f"from {base} into {fb.parent}")
        try:
            got = download_release(cfg.download, fb.parent, base_url=base, md5=cfg.md5 or None,
                                   retries=cfg.download_retries)
        except DownloadError as exc:
            raise InputError(missing_message(cfg, f"downloading {cfg.download} failed: {exc}")) from exc
        lines.append(f"{got.zip_path}: MD5 {got.md5} "
                     + ("matches the published checksum" if got.checked else "(no published checksum)"))
        if got.folder is not None and got.folder.resolve() != fb.resolve():
            if fb.exists():
                raise InputError(f"{got.zip_path} extracted to {got.folder}, but [ingest] fallback_dir "
                                 f"{fb} exists and is not a MovieLens folder; remove it or set "
                                 f"fallback_dir = \"{got.folder}\"")
            got.folder.rename(fb)
        res = resolve(cfg)
        if res.source is None:
            raise InputError(missing_message(cfg, f"{got.zip_path} did not extract a MovieLens folder"))
    return res, lines


def _probe_posters(store, template: str, timeout: float) -> str | None:
    """Probe the poster host with the first movie's URL: None when it answers at all (any HTTP
    status: one movie may lack a poster), else why it cannot be reached."""
    import requests

    has_links = store.table_exists("links")
    row = store.execute(
        "SELECT m.movie_id, " + ("l.tmdb_id, l.imdb_id FROM movies m LEFT JOIN links l USING (movie_id)"
                                 if has_links else "NULL, NULL FROM movies m")
        + " ORDER BY m.movie_id LIMIT 1").fetchone()
    if row is None:
        return None
    try:
        url = template.format(movie_id=row[0], tmdb_id=row[1], imdb_id=row[2])
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"[ingest] posters_url {template!r} is not a valid template: {exc!r}; "
                         "use {movie_id}, {tmdb_id} or {imdb_id}") from exc
    try:
        with requests.get(url, stream=True, timeout=(timeout, timeout), headers={"User-Agent": "posterkg"}):
            return None
    except requests.RequestException as exc:
        return f"{url} could not be reached ({type(exc).__name__})"


def fetch_missing_posters(store, cfg, folder: Path) -> list[str]:
    """Fetch the posters ``folder`` lacks from ``[ingest] posters_url`` (or TMDB); lines to print."""
    from posterkg.ingest.fetch import FetchConfig, fetch_posters

    template = "" if cfg.posters_url == "tmdb" else cfg.posters_url
    if template:
        why = _probe_posters(store, template, cfg.probe_timeout)
        if why:
            raise InputError(
                f"posters for {folder} could not be fetched: {why}. The ratings are ingested; fetch "
                f"the posters with `posterkg posters fetch --dir {folder} --url-template '{template}'` "
                f"(needs network), put the {{movie_id}}.jpg files in {folder}, or set "
                "[ingest] posters_url = \"\" to run without posters.")
    fc = FetchConfig(url_template=template, concurrency=cfg.posters_concurrency)
    folder.mkdir(parents=True, exist_ok=True)
    return fetch_posters(store, fc, folder).lines()
