"""Download a MovieLens release from GroupLens: resumable, checksummed, extracted.

The zip is written to ``<dir>/<name>.zip.part`` first. An interrupted download (a dropped
connection, Ctrl-C) leaves the part file; the next attempt, in the same run or a later one, asks
for the rest with an HTTP ``Range`` request and appends. A server that ignores ``Range`` (answers
200) restarts the file from zero. When complete, the MD5 is checked against the known value
(GroupLens publishes MD5 sums; for releases without a known one the ``<url>.md5`` file is used,
when it exists), and only then is the part renamed to ``<name>.zip`` and extracted.

Bounded: a file may not grow past ``max_bytes`` (default 2 GB, the largest MovieLens zip is about
a third of that; a larger ``Content-Length`` is refused before reading, an endless body is cut
there and the part file removed), and the whole file, retries and resumes included, must arrive
within ``deadline`` seconds (default one hour; the part is kept so a later run resumes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
import zipfile
from pathlib import Path

from posterkg.errors import PosterkgError
from posterkg.progress import bar

BASE_URL = "https://files.grouplens.org/datasets/movielens"

# MD5 of the archives as GroupLens publishes them.
KNOWN_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
    "ml-10m": "ce571fd55effeba0271552578f2648bd",
    "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3",
    "ml-25m": "6b51fb2759a8657d3bfcbfc42b592ada",
}
RELEASES = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest")
# the folder each zip extracts to (ML-10M's is historically named differently)
EXTRACTS_TO = {"ml-10m": "ml-10M100K"}
MAX_BYTES = 2_000_000_000
DEADLINE = 3600.0


class DownloadError(PosterkgError):
    """The download failed for good (HTTP error, retries exhausted, checksum mismatch)."""


@dataclasses.dataclass
class DownloadResult:
    name: str
    zip_path: Path
    folder: Path | None
    md5: str
    checked: bool          # the MD5 was compared with an expected one
    resumed_at: list[int]  # byte offsets requests resumed from (empty: one clean request)
    skipped: bool = False  # the zip was already there and verified
    given: bool = False    # the expected MD5 was the caller's (--md5), not the published one


def iter_body(r, chunk: int = 1 << 16):
    """The body of a streamed ``requests`` response, block by block as the bytes arrive (up to
    ``chunk`` at a time; ``iter_content`` waits for a full chunk, which would let a trickling
    server outlast any deadline checked between chunks). urllib3 errors become requests'."""
    import requests
    import urllib3

    read1 = getattr(r.raw, "read1", None)
    try:
        if read1 is None:                       # pragma: no cover - urllib3 < 2
            yield from r.iter_content(chunk)
            return
        while block := read1(chunk, decode_content=True):
            yield block
    except urllib3.exceptions.HTTPError as exc:
        raise requests.ConnectionError(f"{type(exc).__name__}: {exc}") from exc


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def expected_md5(name: str, url: str, session, timeout: float) -> str | None:
    if name in KNOWN_MD5:
        return KNOWN_MD5[name]
    try:
        with session.get(url + ".md5", timeout=timeout, stream=True) as r:
            head = next(r.iter_content(4096), b"") if r.status_code == 200 else b""   # bounded
        if head:
            m = re.search(r"\b([0-9a-fA-F]{32})\b", head.decode("ascii", errors="replace"))
            if m:
                return m.group(1).lower()
    except Exception:  # noqa: BLE001 - a missing checksum file only means no check
        pass
    return None


def fetch_file(url: str, dest: Path, *, session=None, retries: int = 5, backoff: float = 1.0,
               timeout: float = 60.0, chunk: int = 1 << 16, desc: str = "", max_bytes: int = MAX_BYTES,
               deadline: float = DEADLINE) -> list[int]:
    """Download ``url`` to ``dest`` (via ``dest.part``), resuming with Range; return resume offsets.

    At most ``max_bytes`` bytes in all and ``deadline`` seconds in all (see the module docstring)."""
    import requests

    session = session or requests.Session()
    part = dest.with_name(dest.name + ".part")
    resumed: list[int] = []
    attempt = 0
    start = time.monotonic()

    def too_big(n: int) -> DownloadError:
        part.unlink(missing_ok=True)
        return DownloadError(f"{url}: more than {max_bytes:,} bytes (--max-bytes); stopped, nothing kept")

    def check_time(written: int) -> None:
        if time.monotonic() - start > deadline:
            raise DownloadError(f"{url}: not complete after {deadline:g} s (--deadline), {written:,} bytes "
                                f"so far; {part} is kept, run again to resume")

    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset:
            resumed.append(offset)
        try:
            with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416 and offset:       # nothing left to send: already complete
                    break
                if r.status_code == 206:
                    m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        raise DownloadError(f"{url}: server resumed at the wrong offset "
                                            f"({r.headers.get('Content-Range')!r}, wanted {offset})")
                    mode = "ab"
                elif r.status_code == 200:
                    mode, offset = "wb", 0
                elif r.status_code in (408, 429) or r.status_code >= 500:
                    raise _Retry(f"HTTP {r.status_code}")
                else:
                    raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
                length = r.headers.get("Content-Length")
                total = offset + int(length) if length is not None and length.isdigit() else None
                if total is not None and total > max_bytes:
                    raise too_big(total)
                written = offset
                with open(part, mode) as f, bar(total=total, desc=desc or dest.name, unit="B") as pb:
                    pb.update(offset)
                    for block in iter_body(r, chunk):
                        written += len(block)
                        if written > max_bytes:
                            f.close()
                            raise too_big(written)
                        check_time(written)
                        f.write(block)
                        pb.update(len(block))
                if total is not None and written < total:
                    raise _Retry(f"connection closed at byte {written:,} of {total:,}")
                break
        except (_Retry, requests.RequestException) as exc:
            attempt += 1
            if attempt > retries:
                raise DownloadError(f"{url}: giving up after {retries} retries ({exc}); "
                                    f"{part} is kept, run again to resume") from exc
            check_time(part.stat().st_size if part.exists() else 0)
            time.sleep(backoff * 2 ** (attempt - 1))
    part.replace(dest)
    return resumed


class _Retry(Exception):
    pass


def download_release(name: str, dest_dir: str | Path = "data", *, base_url: str = BASE_URL,
                     md5: str | None = None, extract: bool = True, retries: int = 5,
                     backoff: float = 1.0, timeout: float = 60.0, max_bytes: int = MAX_BYTES,
                     deadline: float = DEADLINE) -> DownloadResult:
    """Download (resuming), verify and extract GroupLens' ``<name>.zip`` into ``dest_dir``."""
    import requests

    if name not in RELEASES:
        raise DownloadError(f"unknown MovieLens release {name!r}; known: {', '.join(RELEASES)}")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{name}.zip"
    zip_path = dest / f"{name}.zip"
    session = requests.Session()
    want = (md5 or expected_md5(name, url, session, timeout) or "").lower() or None
    skipped = False
    resumed: list[int] = []
    if zip_path.exists() and (want is None or md5sum(zip_path) == want):
        skipped = True
    else:
        resumed = fetch_file(url, zip_path, session=session, retries=retries, backoff=backoff,
                             timeout=timeout, max_bytes=max_bytes, deadline=deadline)
    got = md5sum(zip_path)
    if want and got != want:
        bad = zip_path.with_name(zip_path.name + ".bad")
        zip_path.replace(bad)
        raise DownloadError(f"{url}: MD5 {got} does not match the {'given' if md5 else 'published'} {want}; "
                            f"the file was moved to {bad}; run again to download it afresh")
    folder = None
    if extract:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(dest)
                tops = {n.split("/")[0] for n in zf.namelist() if n.strip("/")}
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{zip_path} is not a valid zip: {exc}") from exc
        top = EXTRACTS_TO.get(name, name)
        folder = dest / (top if top in tops else (sorted(tops)[0] if len(tops) == 1 else ""))
    return DownloadResult(name, zip_path, folder, got, want is not None, resumed, skipped, given=bool(md5))
