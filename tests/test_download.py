"""Download (resume, checksum) and poster fetch (retries, failures table), against a local server."""

import hashlib
import io
import zipfile

import pytest

from http_fixtures import reply, send_file, serve
from ml_fixtures import write_csv, write_100k
from posterkg.ingest.download import DownloadError, download_release
from posterkg.ingest.fetch import FetchConfig, fetch_posters
from posterkg.ingest.movielens import detect_layout, ingest_movielens
from posterkg.store import open_store


def _zip_100k(tmp_path) -> bytes:
    src = write_100k(tmp_path / "src" / "ml-100k")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(src.iterdir()):
            zf.write(p, f"ml-100k/{p.name}")
        # padding so the archive is big enough to be cut in the middle
        zf.writestr("ml-100k/README", "x" * 200_000)
    return buf.getvalue()


def test_interrupted_download_resumes_with_range_and_verifies(tmp_path):
    data = _zip_100k(tmp_path)
    md5 = hashlib.md5(data).hexdigest()
    seen = []

    def app(h):
        assert h.path == "/ml-100k.zip"
        seen.append(h.headers.get("Range"))
        send_file(h, data, cut_at=len(data) // 3 if len(seen) == 1 else None)

    with serve(app) as url:
        res = download_release("ml-100k", tmp_path / "dl", base_url=url, md5=md5, backoff=0)
    cut = len(data) // 3
    # resumed from what had reached the part file (whole blocks only), never beyond the cut
    (offset,) = res.resumed_at
    assert 0 < offset <= cut
    assert seen == [None, f"bytes={offset}-"]
    assert res.md5 == md5 and res.checked
    assert (tmp_path / "dl" / "ml-100k.zip").read_bytes() == data
    assert not (tmp_path / "dl" / "ml-100k.zip.part").exists()
    assert res.folder == tmp_path / "dl" / "ml-100k"
    assert detect_layout(res.folder).name == "ml-100k"
    with open_store(tmp_path / "db.duckdb") as s:
        assert ingest_movielens(s, tmp_path / "dl").counts["ratings"] == 9


def test_partial_file_from_an_earlier_run_is_continued(tmp_path):
    data = _zip_100k(tmp_path)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "ml-32m.zip.part").write_bytes(data[:50_000])
    sent = []

    def app(h):
        if h.path == "/ml-32m.zip.md5":   # releases without a known MD5 use the published .md5 file
            reply(h, 200, f"{hashlib.md5(data).hexdigest()}  ml-32m.zip\n".encode(), "text/plain")
        else:
            sent.append((h.headers.get("Range"), send_file(h, data)))

    with serve(app) as url:
        res = download_release("ml-32m", dest, base_url=url, extract=False)
    assert sent == [("bytes=50000-", len(data) - 50_000)]
    assert res.checked and res.folder is None
    assert (dest / "ml-32m.zip").read_bytes() == data
    # a second call finds the verified zip and downloads nothing
    with serve(app) as url:
        again = download_release("ml-32m", dest, base_url=url, extract=False)
    assert again.skipped and len(sent) == 1


def test_server_without_range_support_restarts_from_zero(tmp_path):
    data = _zip_100k(tmp_path)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "ml-1m.zip.part").write_bytes(b"garbage that is not the start of the file")

    with serve(lambda h: send_file(h, data, ranges=False)) as url:
        download_release("ml-1m", dest, base_url=url, md5=hashlib.md5(data).hexdigest(), extract=False)
    assert (dest / "ml-1m.zip").read_bytes() == data


def test_checksum_mismatch_and_http_errors(tmp_path):
    data = _zip_100k(tmp_path)
    with serve(lambda h: send_file(h, data)) as url:
        with pytest.raises(DownloadError, match="does not match"):
            download_release("ml-1m", tmp_path / "a", base_url=url, md5="0" * 32, backoff=0)
    assert (tmp_path / "a" / "ml-1m.zip.bad").exists() and not (tmp_path / "a" / "ml-1m.zip").exists()
    with serve(lambda h: reply(h, 404)) as url:
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_release("ml-1m", tmp_path / "b", base_url=url, backoff=0)
    calls = []

    def always_500(h):
        calls.append(1)
        reply(h, 503)

    with serve(always_500) as url:
        with pytest.raises(DownloadError, match="giving up after 2 retries"):
            download_release("ml-1m", tmp_path / "c", base_url=url, retries=2, backoff=0)
    assert len(calls) == 3
    with pytest.raises(DownloadError, match="unknown MovieLens release"):
        download_release("ml-2m", tmp_path / "d")


# -- posters fetch ---------------------------------------------------------------------------------

def _jpeg(color=(10, 120, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (24, 36), color).save(buf, "JPEG")
    return buf.getvalue()


def test_fetch_from_url_template_with_retries_failures_table_and_retry_failed(tmp_path):
    with open_store(tmp_path / "db.duckdb") as s:
        ingest_movielens(s, write_csv(tmp_path / "ml"))     # movies 1..7
    hits: dict[int, int] = {}
    fixed = set()

    def app(h):
        mid = int(h.path.rsplit("/", 1)[1].split(".")[0])
        hits[mid] = hits.get(mid, 0) + 1
        if mid in (1, 6) or mid in fixed:
            reply(h, 200, _jpeg(), "image/jpeg")
        elif mid == 3 and hits[mid] == 1:
            reply(h, 500)                                   # transient: retried
        elif mid == 3:
            reply(h, 200, _jpeg(), "image/jpeg")
        elif mid == 4:
            reply(h, 200, b"<html>not an image</html>", "text/html")
        elif mid == 7:
            reply(h, 503)                                   # always failing: retries exhausted
        else:
            reply(h, 404)                                   # permanent: not retried

    folder = tmp_path / "posters"
    with serve(app) as url, open_store(tmp_path / "db.duckdb") as s:
        cfg = FetchConfig(url_template=url + "/img/{movie_id}.jpg", concurrency=3, retries=2, backoff=0.01)
        summary = fetch_posters(s, cfg, folder)
        assert (summary.targets, summary.fetched, summary.failed) == (7, 3, 4)
        assert sorted(int(p.stem) for p in folder.glob("*.jpg")) == [1, 3, 6]
        assert s.execute("SELECT movie_id, status FROM posters ORDER BY 1").fetchall() == [
            (1, "ok"), (3, "ok"), (6, "ok")]
        fails = {r[0]: r[1:] for r in s.execute(
            "SELECT movie_id, http_status, attempts, error FROM poster_fetch_failures").fetchall()}
        assert sorted(fails) == [2, 4, 5, 7]
        assert fails[2][:2] == (404, 1) and fails[5][:2] == (404, 1)
        assert fails[7][:2] == (503, 3) and "after 3 attempts" in fails[7][2]
        assert "not a valid image" in fails[4][2]
        assert hits[3] == 2 and hits[7] == 3 and hits[2] == 1

        # a plain re-run tries nothing: posters present, failures recorded
        assert fetch_posters(s, cfg, folder).targets == 0
        # the server now has movie 2 and 7; --retry-failed picks the failures up
        fixed.update({2, 7})
        again = fetch_posters(s, cfg, folder, retry_failed=True)
        assert (again.targets, again.fetched, again.failed) == (4, 2, 2)
        assert sorted(r[0] for r in s.execute("SELECT movie_id FROM poster_fetch_failures").fetchall()) == [4, 5]
        assert s.scalar("SELECT attempts FROM poster_fetch_failures WHERE movie_id = 5") == 2
        assert s.count("posters", "WHERE status = 'ok'") == 5


def test_fetch_from_tmdb_with_key_from_env(tmp_path, monkeypatch):
    with open_store(tmp_path / "db.duckdb") as s:
        ingest_movielens(s, write_csv(tmp_path / "ml"))     # links: 1->862, 2->8844, 3->none, 6->1234
    keys = []

    def app(h):
        if h.path.startswith("/3/movie/"):
            keys.append(h.path.split("api_key=")[-1])
            tmdb = int(h.path.split("/")[3].split("?")[0])
            body = {862: b'{"poster_path": "/toy.jpg"}', 8844: b'{"poster_path": "/jum.jpg"}',
                    1234: b'{"poster_path": null}'}.get(tmdb)
            reply(h, 200 if body else 404, body or b"{}", "application/json")
        elif h.path in ("/t/p/w185/toy.jpg", "/t/p/w185/jum.jpg"):
            reply(h, 200, _jpeg(), "image/jpeg")
        else:
            reply(h, 404)

    monkeypatch.setenv("POSTERKG_TMDB_KEY", "sekrit")
    with serve(app) as url, open_store(tmp_path / "db.duckdb") as s:
        cfg = FetchConfig(tmdb_api=url + "/3", tmdb_images=url + "/t/p", size="w185", backoff=0)
        summary = fetch_posters(s, cfg, tmp_path / "posters", movies=[1, 2, 3, 6])
        assert (summary.fetched, summary.failed) == (2, 2)
        assert set(keys) == {"sekrit"}
        errors = dict(s.execute("SELECT movie_id, error FROM poster_fetch_failures").fetchall())
        assert errors == {3: "no tmdb_id in links for this movie", 6: "TMDB has no poster for this movie"}
        assert s.execute("SELECT movie_id, width, height FROM posters ORDER BY 1").fetchall() == [
            (1, 24, 36), (2, 24, 36)]


def test_fetch_needs_a_source(tmp_path, monkeypatch):
    from posterkg.errors import ConfigError

    monkeypatch.delenv("POSTERKG_TMDB_KEY", raising=False)
    with open_store(tmp_path / "db.duckdb") as s, pytest.raises(ConfigError, match="TMDB API key"):
        fetch_posters(s, FetchConfig(), tmp_path / "p")
