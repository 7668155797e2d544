"""Scan a folder of posters ``{movie_id}.jpg`` into the ``posters`` table.

Every image is opened and checked with Pillow (``verify()`` on the header and structure, then a
full ``load()`` that decodes every pixel, which is what catches truncated JPEGs). Each file gets a
row: ``status`` is ``ok``, ``corrupt`` (the data does not decode: truncated, garbage, empty) or
``unreadable`` (the file cannot be read, or is not an image format Pillow knows), with the reason
in ``error``. A bad file never stops the scan.

The table mirrors the folder: re-scanning adds new files, re-checks changed ones (size or mtime
differ; ``full=True`` re-checks all) and removes rows whose file is gone. Files whose name is not
``<integer>.<jpg|jpeg|png|webp>`` are ignored and counted.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import io
import os
import re
import time
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

    def lines(self) -> list[str]:
        st = ", ".join(f"{v:,} {k}" for k, v in sorted(self.status.items()))
        out = [f"posters in {self.folder}: {self.files:,} files ({st}); {self.checked:,} checked, "
               f"{self.removed:,} removed rows, in {self.seconds:.1f}s"]
        if self.ignored:
            out.append(f"{len(self.ignored):,} file(s) ignored (name is not <movie_id>.jpg): "
                       + ", ".join(self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else ""))
        return out


def check_image(path: str | Path) -> dict:
    """Open and fully decode one image; return the posters columns for it."""
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
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            row["width"], row["height"] = im.size
    except UnidentifiedImageError:
        if data.startswith(_MAGIC):   # looks like an image, but the header is broken
            row.update(status="corrupt", error="image header is broken (Pillow cannot identify it)")
        else:
            row.update(status="unreadable", error="not an image format Pillow recognises")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a corrupt file
        row.update(status="corrupt", error=f"{type(exc).__name__}: {exc}"[:500])
    return row


def list_poster_files(folder: Path) -> tuple[dict[int, Path], list[str]]:
    """movie_id -> file (preferring .jpg), and the names that were ignored."""
    found: dict[int, Path] = {}
    ignored: list[str] = []
    with os.scandir(folder) as it:
        entries = sorted((e.name for e in it if e.is_file()), key=str)
    for name in entries:
        m = _NAME.match(name)
        ext = m.group(2).lower() if m else ""
        if not m or ext not in EXTENSIONS:
            ignored.append(name)
            continue
        mid = int(m.group(1))
        if mid in found and EXTENSIONS[found[mid].suffix.lower()] <= EXTENSIONS[ext]:
            ignored.append(name)
            continue
        if mid in found:
            ignored.append(found[mid].name)
        found[mid] = folder / name
    return found, ignored


def scan_posters(store: Store, posters_dir: str | Path, *, full: bool = False,
                 workers: int | None = None) -> ScanSummary:
    """Scan ``posters_dir`` into ``posters`` (see the module docstring)."""
    t0 = time.perf_counter()
    folder = Path(posters_dir).resolve()   # absolute: later stages may run from another directory
    if not folder.is_dir():
        raise InputError(f"poster folder {folder} does not exist")
    ensure_schema(store)
    files, ignored = list_poster_files(folder)

    known = {}
    if not full:
        for mid, path, size, mtime in store.execute("SELECT movie_id, path, bytes, mtime FROM posters").fetchall():
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
        for mid, row in zip((m for m, _ in todo), pool.map(check_image, (p for _, p in todo), chunksize=16)):
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
                       time.perf_counter() - t0)


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
