"""`posterkg run` on a fresh machine: no ../shared, the data comes over HTTP (a local server).

A small ML-1M-format set with drawn posters (posterkg.synthetic) is zipped as GroupLens ships
ml-1m.zip and served from 127.0.0.1 with its posters; the whole pipeline then runs as a
subprocess from an empty folder. Never the internet.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import duckdb
import pytest

from http_fixtures import reply, send_file, serve

REPO = Path(__file__).resolve().parent.parent
N_MOVIES, N_USERS = 80, 120


@pytest.fixture(scope="module")
def served_set(tmp_path_factory):
    """(zip bytes, {movie_id: poster bytes}) of a small synthetic ML-1M-format release."""
    from posterkg.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n_movies=N_MOVIES, n_users=N_USERS, seed=1, min_ratings=20, max_ratings=40)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("movies.dat", "users.dat", "ratings.dat"):
            zf.write(root / name, f"ml-1m/{name}")
        zf.writestr("ml-1m/README", "synthetic ML-1M-format test release\n")
    posters = {int(p.stem): p.read_bytes() for p in (root / "posters").glob("*.jpg")}
    return buf.getvalue(), posters, root


def _app(data: bytes, posters: dict[int, bytes], hits: dict):
    def app(h):
        path = h.path.split("?")[0]
        hits[path] = hits.get(path, 0) + 1
        if path == "/ml-1m.zip":
            send_file(h, data)
        elif path.startswith("/posters/") and path.endswith(".jpg") and path[9:-4].isdigit() \
                and int(path[9:-4]) in posters:
            reply(h, 200, posters[int(path[9:-4])], "image/jpeg")
        else:
            reply(h, 404, b"not found", "text/plain")
    return app


def _config(folder: Path, base: str, md5: str, *, source: str = "../shared-absent/ml-1m") -> Path:
    cfg = folder / "run.toml"
    cfg.write_text(f"""
db = "runs/fresh.duckdb"

[ingest]
source = "{source}"
posters = "{source}/posters"
download = "ml-1m"
fallback_dir = "data/ml-1m"
download_url = "{base}"
md5 = "{md5}"
posters_url = "{base}/posters/{{movie_id}}.jpg"
download_retries = 1
probe_timeout = 3.0

[split]
scheme = "temporal"

[tag]
backend = "pixels"
batch_size = 32

[embed]
model = "minilm"

[schema]
sample = 1.0
method = "agglomerative"
distance_threshold = 0.05
min_concepts = 1
max_concepts = 60

[gnn]
model = "posterkg"
baselines = ["mostpop"]
dim = 16
epochs = 2
batch_size = 1024
patience = 2
""", encoding="utf-8")
    return cfg


def _posterkg(cfg: Path, cwd: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # about 15 s on 2 idle cores; the limit only guards against a hang on a heavily shared machine
    env = dict(os.environ, POSTERKG_PROGRESS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "posterkg", "run", "--config", str(cfg), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_run_from_an_empty_folder_downloads_then_finishes(served_set, tmp_path):
    data, posters, _ = served_set
    hits: dict[str, int] = {}
    with serve(_app(data, posters, hits)) as base:
        cfg = _config(tmp_path, base, hashlib.md5(data).hexdigest())
        proc = _posterkg(cfg, tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "downloading ml-1m" in proc.stdout
        assert hits.get("/ml-1m.zip", 0) >= 1
        assert sum(v for k, v in hits.items() if k.startswith("/posters/")) >= N_MOVIES

        got = tmp_path / "data" / "ml-1m"
        assert (got / "ratings.dat").is_file() and (tmp_path / "data" / "ml-1m.zip").is_file()
        assert len(list((got / "posters").glob("*.jpg"))) == N_MOVIES
        con = duckdb.connect(str(tmp_path / "runs" / "fresh.duckdb"), read_only=True)
        try:
            assert con.execute("SELECT count(*) FROM movies").fetchone()[0] == N_MOVIES
            assert con.execute("SELECT count(*) FROM users").fetchone()[0] == N_USERS
            assert con.execute("SELECT count(*) FROM posters WHERE status = 'ok'").fetchone()[0] == N_MOVIES
            assert con.execute("SELECT count(*) FROM split").fetchone()[0] > 0
            assert con.execute("SELECT count(*) FROM raw_points").fetchone()[0] > 0
            assert con.execute("SELECT count(*) FROM models").fetchone()[0] >= 1
        finally:
            con.close()

        # a second run finds the data in data/ml-1m: no download, every stage skipped
        before = dict(hits)
        again = _posterkg(cfg, tmp_path)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert hits == before
        assert "== " not in again.stdout, again.stdout           # no stage header: nothing ran
        assert again.stdout.count("skipped") >= 6 and not re.search(r"\bran\b", again.stdout)


def test_no_network_fails_fast_with_one_clear_message(tmp_path):
    # the default 5 retries: without the probe, the download's backoff alone would sleep 31 s
    cfg = _config(tmp_path, f"http://127.0.0.1:{_closed_port()}", "")
    cfg.write_text(cfg.read_text().replace("download_retries = 1", "download_retries = 5"))
    # the same process up to the ingest stage, without the network step: `--only split` loads
    # every stage and fingerprints ingest, then fails in split (no ratings). The machine is
    # shared, so the bound is on the difference, not on the absolute time.
    t0 = time.perf_counter()
    base = _posterkg(cfg, tmp_path, "--only", "split", timeout=600)
    startup = time.perf_counter() - t0
    assert base.returncode != 0 and "no ratings" in base.stderr, base.stderr
    t0 = time.perf_counter()
    proc = _posterkg(cfg, tmp_path, timeout=600)
    took = time.perf_counter() - t0 - startup
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "posterkg download ml-1m --dir data" in err and "data/ml-1m" in err, err
    assert len(err.splitlines()) == 1, err
    assert took < 15, took          # one refused connect, no retries with backoff
    assert not (tmp_path / "data" / "ml-1m").exists()


def test_unavailable_server_is_asked_once(tmp_path):
    hits: dict[str, int] = {}

    def app(h):
        hits[h.path] = hits.get(h.path, 0) + 1
        reply(h, 503, b"down for maintenance", "text/plain")

    with serve(app) as base:
        cfg = _config(tmp_path, base, "")
        cfg.write_text(cfg.read_text().replace("download_retries = 1", "download_retries = 5"))
        proc = _posterkg(cfg, tmp_path, "--until", "ingest", timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "HTTP 503" in proc.stderr and "posterkg download ml-1m --dir data" in proc.stderr, proc.stderr
    assert hits == {"/ml-1m.zip": 1}, hits      # the probe only: no retry loop against a dead server


def test_posters_host_down_after_download_says_how_to_fetch(served_set, tmp_path):
    data, _, _ = served_set
    with serve(_app(data, {}, {})) as base:
        cfg = _config(tmp_path, base, hashlib.md5(data).hexdigest())
        text = cfg.read_text().replace(f'posters_url = "{base}/posters/',
                                       f'posters_url = "http://127.0.0.1:{_closed_port()}/posters/')
        cfg.write_text(text)
        proc = _posterkg(cfg, tmp_path, "--until", "ingest", timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "posterkg posters fetch --dir data/ml-1m/posters" in proc.stderr, proc.stderr
    assert (tmp_path / "data" / "ml-1m" / "ratings.dat").is_file()   # the download is kept


def test_present_source_is_used_and_nothing_is_downloaded(served_set, tmp_path):
    _, _, root = served_set
    # a server that refuses every connection: any download attempt would fail the run
    cfg = _config(tmp_path, f"http://127.0.0.1:{_closed_port()}", "", source=str(root))
    proc = _posterkg(cfg, tmp_path, "--until", "ingest", timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "downloading" not in proc.stdout
    assert not (tmp_path / "data").exists()
    con = duckdb.connect(str(tmp_path / "runs" / "fresh.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM posters WHERE status = 'ok'").fetchone()[0] == N_MOVIES
    finally:
        con.close()
