"""Scan a folder of posters ``{movie_id}.jpg`` into the ``posters`` table.

Every image is opened and checked with Pillow (``verify()`` on the header and structure, then a
full ``load()`` that decodes every pixel, which is what catches truncated JPEGs). Each file gets a
row: ``status`` is ``ok``, ``corrupt`` (the data does not decode: truncated, garbage, empty) or
``unreadable`` (the file cannot be read, or is not an image format Pillow knows), with the reason
in ``error``. A bad file never stops the scan.

The table mirrors the folder: re-scanning adds new files, re-checks changed ones (size or mtime
differ; ``full=True`` re-checks all) and removes rows whose file is gone.

The folder is not trusted:

* only canonical names ``<movie_id>.<jpg|jpeg|png|webp>`` count (``13.jpg``; ``013.jpg`` is not
  movie 13 and is ignored, with that reason); every ignored file is listed with its reason;
* reads stay inside the folder: a symlink whose target lies outside it is ignored, unless the
  caller asks for it (``follow_symlinks=True``, ``posters scan --follow-symlinks``; e.g. a folder
  of links to a subset of another poster folder);
* an image of more than ``max_pixels`` pixels (``[ingest] max_pixels``, default 25 Mpx; read from
  the header, nothing is decoded) gets the status ``too_large``: a 144-Mpx file would take
  gigabytes to tag;
* a poster of a movie id that is not in ``movies`` is reported and skipped (no row), once the
  ``movies`` table has rows.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import hashlib
import io
import os
import re
import time
import warnings
from pathlib import Path

from posterkg.errors import InputError
from posterkg.progress import bar
from posterkg.store import Store

COMPONENT = "posters"
MIGRATIONS = [
    """CREATE TABLE IF NOT EXISTS posters (
        movie_id INTEGER PRIMARY KEY, path VARCHAR, width INTEGER, height INTEGER, sha256 VARCHAR,
        status VARCHAR, error VARCHAR, bytes BIGINT, mtime DOUBLE,
        scanned_at TIMESTAMP DEFAULT current_timestamp)""",
    """CREATE TABLE IF NOT EXISTS poster_fetch_failures (
        movie_id INTEGER PRIMARY KEY, url VARCHAR, http_status INTEGER, error VARCHAR,
        attempts INTEGER, failed_at TIMESTAMP DEFAULT current_timestamp)""",
]

EXTENSIONS = {".jpg": 0, ".jpeg": 1, ".png": 2, ".webp": 3}   # preference when an id has several
_MAGIC = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"RIFF", b"BM")
_NAME = re.compile(r"^(\d+)(\.[A-Za-z]+)$")
DEFAULT_MAX_PIXELS = 25_000_000


def ensure_schema(store: Store) -> None:
    store.migrate(COMPONENT, MIGRATIONS)


@dataclasses.dataclass
class ScanSummary:
    folder: str
    files: int
    checked: int           # opened and verified in this run (the rest were unchanged)
    status: dict[str, int]
    ignored: list[str]
    removed: int
    seconds: float
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)   # ignored name -> why
    unknown: list[int] = dataclasses.field(default_factory=list)       # ids not in movies (skipped)

    def lines(self) -> list[str]:
        st = ", ".join(f"{v:,} {k}" for k, v in sorted(self.status.items()))
        out = [f"posters in {self.folder}: {self.files:,} files ({st}); {self.checked:,} checked, "
               f"{self.removed:,} removed rows, in {self.seconds:.1f}s"]
        if self.ignored:
            by_reason: dict[str, list[str]] = {}
            for name in self.ignored:
                by_reason.setdefault(self.reasons.get(name, "name is not <movie_id>.jpg"), []).append(name)
            for why, names in by_reason.items():
                out.append(f"{len(names):,} file(s) ignored ({why}): "
                           + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
        if self.unknown:
            out.append(f"{len(self.unknown):,} poster(s) of movie ids not in table movies skipped: "
                       + ", ".join(map(str, self.unknown[:10])) + (" ..." if len(self.unknown) > 10 else ""))
        return out


def check_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Open and fully decode one image; return the posters columns for it. An image of more than
    ``max_pixels`` pixels (0: no cap) is not decoded: status ``too_large``."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    row = {"path": str(p), "width": None, "height": None, "sha256": None, "status": "ok", "error": None,
           "bytes": None, "mtime": None}
    try:
        st = p.stat()
        row["bytes"], row["mtime"] = st.st_size, st.st_mtime
        data = p.read_bytes()
    except OSError as exc:
        row.update(status="unreadable", error=f"cannot read file: {exc.strerror or exc}")
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        row.update(status="corrupt", error="empty file")
        return row
    try:
        with warnings.catch_warnings():
            # posterkg applies its own cap below; Pillow's bomb warning is noise for a user
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if max_pixels and w * h > max_pixels:
                    row.update(width=w, height=h, status="too_large",
                               error=f"{w}x{h} = {w * h / 1e6:.1f} Mpx, over the cap of "
                                     f"{max_pixels / 1e6:.1f} Mpx ([ingest] max_pixels)")
                    return row
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                row["width"], row["height"] = im.size
    except Image.DecompressionBombError as exc:
        row.update(status="too_large", error=f"{exc}"[:300])
    except UnidentifiedImageError:
        if data.startswith(_MAGIC):   # looks like an image, but the header is broken
            row.update(status="corrupt", error="image header is broken (Pillow cannot identify it)")
        else:
            row.update(status="unreadable", error="not an image format Pillow recognises")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a corrupt file
        row.update(status="corrupt", error=f"{type(exc).__name__}: {exc}"[:500])
    return row


def list_poster_files(folder: Path, reasons: dict[str, str] | None = None, *,
                      follow_symlinks: bool = False) -> tuple[dict[int, Path], list[str]]:
    """movie_id -> file (preferring .jpg), and the names that were ignored (``reasons``, when
    given, receives why: not a canonical name, a duplicate id, a symlink out of the folder)."""
    found: dict[int, Path] = {}
    ignored: list[str] = []
    why = reasons if reasons is not None else {}
    root = folder.resolve()

    def skip(name: str, reason: str) -> None:
        ignored.append(name)
        why[name] = reason

    with os.scandir(folder) as it:
        entries = sorted(((e.name, e.is_symlink()) for e in it if e.is_file()), key=str)
    for name, link in entries:
        m = _NAME.match(name)
        ext = m.group(2).lower() if m else ""
        if not m or ext not in EXTENSIONS:
            skip(name, "name is not <movie_id>.jpg|.jpeg|.png|.webp")
            continue
        digits = m.group(1)
        if digits != str(int(digits)):
            skip(name, f"not a canonical name: a leading zero; {name} is not movie {int(digits)}, "
                       f"name it {int(digits)}{m.group(2)}")
            continue
        if link and not follow_symlinks:
            target = (folder / name).resolve()
            if root not in target.parents:
                skip(name, "a symlink to a file outside the poster folder")
                continue
        mid = int(digits)
        if mid in found and EXTENSIONS[found[mid].suffix.lower()] <= EXTENSIONS[ext]:
            skip(name, f"movie {mid} already has {found[mid].name}")
            continue
        if mid in found:
            skip(found[mid].name, f"movie {mid} also has {name}, which is preferred")
        found[mid] = folder / name
    return found, ignored


def scan_posters(store: Store, posters_dir: str | Path, *, full: bool = False,
                 workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 follow_symlinks: bool = False) -> ScanSummary:
    """Scan ``posters_dir`` into ``posters`` (see the module docstring)."""
    t0 = time.perf_counter()
    folder = Path(posters_dir).resolve()   # absolute: later stages may run from another directory
    if not folder.is_dir():
        raise InputError(f"poster folder {folder} does not exist")
    if max_pixels < 0:
        raise InputError(f"max_pixels must be >= 0 (0: no cap), got {max_pixels}")
    ensure_schema(store)
    reasons: dict[str, str] = {}
    files, ignored = list_poster_files(folder, reasons, follow_symlinks=follow_symlinks)
    unknown: list[int] = []
    if store.table_exists("movies") and store.count("movies"):
        movie_ids = {int(r[0]) for r in store.execute("SELECT movie_id FROM movies").fetchall()}
        unknown = sorted(set(files) - movie_ids)
        for mid in unknown:
            del files[mid]

    known = {}
    if not full:
        for mid, path, size, mtime, w, h, status in store.execute(
                "SELECT movie_id, path, bytes, mtime, width, height, status FROM posters").fetchall():
            over = bool(max_pixels) and w is not None and h is not None and w * h > max_pixels
            if over != (status == "too_large"):
                continue        # the cap changed for this file: check it again
            known[mid] = (path, size, mtime)
    todo = []
    for mid, p in files.items():
        if mid in known:
            try:
                st = p.stat()
            except OSError:
                todo.append((mid, p))
                continue
            if known[mid] == (str(p), st.st_size, st.st_mtime):
                continue
        todo.append((mid, p))

    rows = []
    n_workers = workers or min(4, os.cpu_count() or 1)
    with cf.ThreadPoolExecutor(max_workers=n_workers) as pool, \
            bar(total=len(todo), desc="posters", unit="img") as pb:
        check = functools.partial(check_image, max_pixels=max_pixels)
        for mid, row in zip((m for m, _ in todo), pool.map(check, (p for _, p in todo), chunksize=16)):
            row["movie_id"] = mid
            rows.append(row)
            pb.update(1)

    import pandas as pd

    cols = ["movie_id", "path", "width", "height", "sha256", "status", "error", "bytes", "mtime"]
    frame = pd.DataFrame(rows, columns=cols)
    if len(frame):
        frame = frame.astype({"movie_id": "int32", "width": "Int32", "height": "Int32", "bytes": "Int64",
                              "mtime": "float64"})
    existing = {r[0] for r in store.execute("SELECT movie_id FROM posters").fetchall()}
    gone = sorted(existing - set(files))
    drop = pd.DataFrame({"movie_id": pd.Series(gone + frame["movie_id"].tolist(), dtype="int64")})
    with store.transaction():
        if len(drop):
            store.con.register("_pk_drop", drop)
            store.execute("DELETE FROM posters WHERE movie_id IN (SELECT movie_id FROM _pk_drop)")
            store.con.unregister("_pk_drop")
        store.insert_df("posters", frame)
    status = dict(store.execute("SELECT status, count(*) FROM posters GROUP BY 1").fetchall())
    return ScanSummary(str(folder), len(files), len(rows), status, ignored, len(gone),
                       time.perf_counter() - t0, reasons, unknown)


def movies_without_poster(store: Store) -> list[tuple[int, str]]:
    """(movie_id, title) of movies with no poster file at all."""
    if not store.table_exists("posters"):
        return [tuple(r) for r in store.execute("SELECT movie_id, title FROM movies ORDER BY 1").fetchall()]
    return [tuple(r) for r in store.execute(
        "SELECT m.movie_id, m.title FROM movies m ANTI JOIN posters p USING (movie_id) ORDER BY 1").fetchall()]


def movies_with_bad_poster(store: Store) -> list[tuple[int, str, str, str]]:
    """(movie_id, title, status, error) of movies whose poster file is not usable."""
    if not store.table_exists("posters"):
        return []
    return [tuple(r) for r in store.execute(
        "SELECT p.movie_id, m.title, p.status, p.error FROM posters p LEFT JOIN movies m USING (movie_id) "
        "WHERE p.status <> 'ok' ORDER BY 1").fetchall()]
