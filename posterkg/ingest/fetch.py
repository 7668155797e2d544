"""``posterkg posters fetch``: get missing posters over HTTP into the poster folder.

Two sources:

* a **URL template**, e.g. ``http://host/posters/{movie_id}.jpg`` or ``.../{tmdb_id}.jpg`` or
  ``{imdb_id}`` (the last two need ``links.csv``, i.e. ML-20M and later);
* the **TMDB API** (ML-20M+ ``links.csv`` gives each movie's ``tmdb_id``): the key comes from
  ``--tmdb-key``, else the environment variable ``POSTERKG_TMDB_KEY``, else ``[fetch] tmdb_key``.
  A v3 API key is sent as ``api_key=``; a v4 read-access token (``eyJ...``) as a Bearer header.

Movies are fetched by a thread pool (``concurrency``); a request that fails with a connection
error, a timeout, 408, 429 or a 5xx is retried with exponential backoff (``backoff * 2**k``
seconds, ``Retry-After`` honoured up to 60 s). Every body is streamed to a temporary file in the
poster folder with a byte cap (``max_bytes``, 20 MB; a larger ``Content-Length`` is refused before
reading) and a total deadline per file (``deadline`` seconds, checked as each block arrives; a
server that sends nothing at all is cut by the per-read ``timeout``), so an endless or trickling body costs at most that much memory-free disk and time;
either is a permanent failure (not retried). Every image is checked with Pillow (and the pixel cap
of :func:`posterkg.ingest.posters.check_image`) before it is renamed (atomically) to
``<dir>/<movie_id>.jpg`` and added to ``posters``. Each movie that still
fails is recorded in the table ``poster_fetch_failures`` (movie_id, url, http_status, error,
attempts); a normal run skips them, ``--retry-failed`` tries exactly them again, and a success
removes the row.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import io
import os
import threading
import time
from pathlib import Path

from posterkg.errors import ConfigError
from posterkg.ingest.posters import check_image, ensure_schema
from posterkg.progress import bar
from posterkg.store import Store

ENV_KEY = "POSTERKG_TMDB_KEY"


@dataclasses.dataclass
class FetchConfig:
    """``[fetch]`` section."""

    dir: str = ""                  # poster folder; default: [ingest] posters
    url_template: str = ""         # e.g. "http://host/{movie_id}.jpg"; empty: use TMDB
    tmdb_key: str = ""             # prefer the environment variable POSTERKG_TMDB_KEY
    tmdb_api: str = "https://api.themoviedb.org/3"
    tmdb_images: str = "https://image.tmdb.org/t/p"
    size: str = "w342"             # TMDB image size (w185, w342, w500, original)
    concurrency: int = 8
    retries: int = 3               # extra attempts after the first
    backoff: float = 1.0           # seconds, doubled per retry
    timeout: float = 30.0          # seconds per connect / per read
    max_bytes: int = 20_000_000    # per poster: a bigger (or endless) body is stopped and recorded
    deadline: float = 120.0        # seconds per poster, all reads together


@dataclasses.dataclass
class FetchResult:
    movie_id: int
    ok: bool
    url: str | None = None
    http_status: int | None = None
    error: str | None = None
    attempts: int = 0
    path: str | None = None


@dataclasses.dataclass
class FetchSummary:
    targets: int
    fetched: int
    failed: int
    seconds: float
    first_failures: list[FetchResult]

    def lines(self) -> list[str]:
        out = [f"posters fetch: {self.targets:,} movie(s) tried, {self.fetched:,} fetched, "
               f"{self.failed:,} failed (table poster_fetch_failures) in {self.seconds:.1f}s"]
        for f in self.first_failures:
            status = f" HTTP {f.http_status}" if f.http_status else ""
            out.append(f"  movie {f.movie_id}:{status} {f.error} ({f.url or 'no url'})")
        return out


class _Transient(Exception):
    def __init__(self, msg: str, status: int | None = None, wait: float | None = None):
        super().__init__(msg)
        self.status, self.wait = status, wait


class _Permanent(Exception):
    def __init__(self, msg: str, status: int | None = None):
        super().__init__(msg)
        self.status = status


class Fetcher:
    def __init__(self, cfg: FetchConfig, folder: Path, tmdb_key: str | None):
        self.cfg, self.folder, self.key = cfg, folder, tmdb_key
        self._local = threading.local()

    @property
    def session(self):
        import requests

        if not hasattr(self._local, "s"):
            self._local.s = requests.Session()
            self._local.s.headers["User-Agent"] = "posterkg"
        return self._local.s

    def _get(self, url: str, **kw):
        """A streamed 200 response (the caller reads and closes it)."""
        import requests

        try:
            r = self.session.get(url, timeout=self.cfg.timeout, stream=True, **kw)
        except requests.RequestException as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}"[:300]) from exc
        if r.status_code == 200:
            return r
        r.close()
        if r.status_code in (408, 429) or r.status_code >= 500:
            wait = r.headers.get("Retry-After")
            raise _Transient(f"HTTP {r.status_code}", r.status_code,
                             float(wait) if wait and wait.isdigit() else None)
        raise _Permanent(f"HTTP {r.status_code} {r.reason}", r.status_code)

    def _stream(self, url: str, sink, limit: int, **kw) -> int:
        """GET ``url`` into ``sink`` (a binary file) with the byte cap ``limit`` and the per-file
        deadline; return the bytes written."""
        import requests

        r = self._get(url, **kw)
        start = time.monotonic()
        n = 0
        try:
            length = r.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise _Permanent(f"body of {int(length):,} bytes is over the cap of {limit:,} bytes "
                                 "([fetch] max_bytes); not downloaded", 200)
            from posterkg.ingest.download import iter_body

            for block in iter_body(r):
                n += len(block)
                if n > limit:
                    raise _Permanent(f"body is over the cap of {limit:,} bytes ([fetch] max_bytes); "
                                     "stopped", 200)
                if time.monotonic() - start > self.cfg.deadline:
                    raise _Permanent(f"not complete after {self.cfg.deadline:g} s ([fetch] deadline); "
                                     f"stopped at {n:,} bytes", 200)
                sink.write(block)
        except requests.RequestException as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}"[:300]) from exc
        finally:
            r.close()
        return n

    def _json(self, url: str, **kw):
        import json

        buf = io.BytesIO()
        self._stream(url, buf, 1 << 20, **kw)
        try:
            return json.loads(buf.getvalue())
        except ValueError as exc:
            raise _Permanent(f"answer from {url.split('?')[0]} is not JSON") from exc

    def _with_retries(self, fn, res: FetchResult):
        last: _Transient | None = None
        for k in range(self.cfg.retries + 1):
            res.attempts += 1
            try:
                return fn()
            except _Transient as exc:
                last = exc
                if k < self.cfg.retries:
                    time.sleep(min(60.0, exc.wait if exc.wait is not None else self.cfg.backoff * 2 ** k))
        raise _Permanent(f"{last} (after {res.attempts} attempts)", last.status if last else None)

    def resolve(self, movie_id: int, tmdb_id, imdb_id, res: FetchResult) -> str:
        tpl = self.cfg.url_template
        if tpl:
            if "{tmdb_id}" in tpl and tmdb_id is None:
                raise _Permanent("no tmdb_id in links for this movie")
            if "{imdb_id}" in tpl and imdb_id is None:
                raise _Permanent("no imdb_id in links for this movie")
            return tpl.format(movie_id=movie_id, tmdb_id=tmdb_id, imdb_id=imdb_id)
        if tmdb_id is None:
            raise _Permanent("no tmdb_id in links for this movie")
        url = f"{self.cfg.tmdb_api.rstrip('/')}/movie/{int(tmdb_id)}"
        res.url = url
        if self.key.startswith("eyJ"):   # v4 read-access token
            kw = {"headers": {"Authorization": f"Bearer {self.key}"}}
        else:
            kw = {"params": {"api_key": self.key}}
        meta = self._with_retries(lambda: self._json(url, **kw), res)
        if not isinstance(meta, dict):
            raise _Permanent("TMDB answered something that is not a JSON object")
        path = meta.get("poster_path")
        if not path:
            raise _Permanent("TMDB has no poster for this movie")
        return f"{self.cfg.tmdb_images.rstrip('/')}/{self.cfg.size}{path}"

    def fetch_one(self, movie_id: int, tmdb_id, imdb_id) -> FetchResult:
        res = FetchResult(movie_id, False)
        tmp = self.folder / f".{movie_id}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            url = self.resolve(movie_id, tmdb_id, imdb_id, res)
            res.url = url

            def attempt() -> int:
                with open(tmp, "wb") as f:      # each attempt starts the file afresh
                    return self._stream(url, f, self.cfg.max_bytes)

            self._with_retries(attempt, res)
            res.path = str(self._commit(movie_id, tmp))
            res.ok, res.http_status = True, 200
        except _Permanent as exc:
            res.error, res.http_status = str(exc), exc.status
        except Exception as exc:  # noqa: BLE001 - one bad movie must not stop the others
            res.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            tmp.unlink(missing_ok=True)
        return res

    def _commit(self, movie_id: int, tmp: Path) -> Path:
        """Check the downloaded file is an image within the pixel cap, then rename it into place."""
        from PIL import Image

        from posterkg.ingest.posters import DEFAULT_MAX_PIXELS

        try:
            with Image.open(tmp) as im:
                fmt = (im.format or "JPEG").upper()
                w, h = im.size
                if w * h > DEFAULT_MAX_PIXELS:
                    raise _Permanent(f"downloaded image is {w}x{h}, over the pixel cap")
                im.load()
        except _Permanent:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _Permanent(f"downloaded file is not a valid image ({type(exc).__name__}: {exc})"[:300]) from exc
        ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}.get(fmt, ".jpg")
        dest = self.folder / f"{movie_id}{ext}"
        os.replace(tmp, dest)
        return dest


def resolve_key(cfg: FetchConfig, flag: str | None = None) -> str:
    return flag or os.environ.get(ENV_KEY) or cfg.tmdb_key or ""


def fetch_posters(store: Store, cfg: FetchConfig, folder: str | Path, *, tmdb_key: str | None = None,
                  retry_failed: bool = False, limit: int | None = None,
                  movies: list[int] | None = None, report: int = 10) -> FetchSummary:
    """Fetch posters of movies that have no file in ``folder`` (see the module docstring)."""
    t0 = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = resolve_key(cfg, tmdb_key)
    if not cfg.url_template and not key:
        raise ConfigError(f"posters fetch needs a URL template (--url-template / [fetch] url_template) "
                          f"or a TMDB API key (--tmdb-key, ${ENV_KEY} or [fetch] tmdb_key)")
    if cfg.concurrency < 1 or cfg.retries < 0:
        raise ConfigError("[fetch] concurrency must be >= 1 and retries >= 0")
    if cfg.max_bytes < 1 or cfg.deadline <= 0 or cfg.timeout <= 0:
        raise ConfigError("[fetch] max_bytes, deadline and timeout must be > 0")
    ensure_schema(store)
    if not store.table_exists("movies"):
        raise ConfigError("no movies in the database; run `posterkg ingest movielens` first")
    has_links = store.table_exists("links")
    link_join = "LEFT JOIN links l USING (movie_id)" if has_links else ""
    link_cols = "l.tmdb_id, l.imdb_id" if has_links else "NULL, NULL"
    rows = store.execute(f"""
        SELECT m.movie_id, {link_cols}, f.movie_id IS NOT NULL AS failed_before
        FROM movies m {link_join} LEFT JOIN poster_fetch_failures f USING (movie_id)
        ORDER BY m.movie_id""").fetchall()
    present = {int(p.stem) for p in folder.iterdir() if p.stem.isdigit() and p.is_file()}
    wanted = set(movies) if movies else None
    targets = [(m, t, i) for m, t, i, failed in rows
               if (failed if retry_failed else (not failed and m not in present))
               and (wanted is None or m in wanted)]
    if limit is not None:
        targets = targets[: int(limit)]

    fetcher = Fetcher(cfg, folder, key)
    fetched = failed = 0
    firsts: list[FetchResult] = []
    with cf.ThreadPoolExecutor(max_workers=cfg.concurrency) as pool, \
            bar(total=len(targets), desc="fetch", unit="poster") as pb:
        futures = [pool.submit(fetcher.fetch_one, m, t, i) for m, t, i in targets]
        for fut in cf.as_completed(futures):
            res = fut.result()
            pb.update(1)
            if res.ok:
                fetched += 1
                _record_success(store, res)
            else:
                failed += 1
                _record_failure(store, res)
                if len(firsts) < report:
                    firsts.append(res)
    firsts.sort(key=lambda r: r.movie_id)
    return FetchSummary(len(targets), fetched, failed, time.perf_counter() - t0, firsts)


def _record_success(store: Store, res: FetchResult) -> None:
    row = check_image(res.path)
    with store.transaction() as con:
        con.execute("DELETE FROM poster_fetch_failures WHERE movie_id = ?", [res.movie_id])
        con.execute("DELETE FROM posters WHERE movie_id = ?", [res.movie_id])
        con.execute("INSERT INTO posters (movie_id, path, width, height, sha256, status, error, bytes, mtime) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [res.movie_id, row["path"], row["width"], row["height"], row["sha256"], row["status"],
                     row["error"], row["bytes"], row["mtime"]])


def _record_failure(store: Store, res: FetchResult) -> None:
    store.execute("""
        INSERT INTO poster_fetch_failures (movie_id, url, http_status, error, attempts, failed_at)
        VALUES (?, ?, ?, ?, ?, current_timestamp)
        ON CONFLICT (movie_id) DO UPDATE SET url = excluded.url, http_status = excluded.http_status,
            error = excluded.error, attempts = poster_fetch_failures.attempts + excluded.attempts,
            failed_at = excluded.failed_at""",
                  [res.movie_id, res.url, res.http_status, res.error, res.attempts])
