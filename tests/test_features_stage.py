"""The pipeline's ``features`` stage: does nothing without [features], embeds with it."""

from __future__ import annotations

from ml_fixtures import MOVIES, write_dat, write_jpeg

from posterkg.config import Config
from posterkg.pipeline import run_pipeline
from posterkg.store import open_store


def test_features_stage_runs_only_when_configured(tmp_path):
    src = write_dat(tmp_path / "ml")
    (src / "posters").mkdir()
    for i, (m, _, _) in enumerate(MOVIES):
        write_jpeg(src / "posters" / f"{m}.jpg", color=(40 * i, 200 - 30 * i, 90))
    base = {"db": str(tmp_path / "x.duckdb"), "ingest": {"source": str(src), "posters": str(src / "posters")},
            "split": {"min_ratings": 1}, "tag": {"backend": "pixels"}}
    with open_store(tmp_path / "x.duckdb") as store:
        rows = run_pipeline(store, Config(data=base), until="features")
        assert [r[:2] for r in rows][-1] == ("features", "ran")
        assert not store.table_exists("poster_embeddings")
        cfg = Config(data={**base, "features": {"poster_encoder": "pixels", "text": False}})
        rows = run_pipeline(store, cfg, until="features")
        assert dict((r[0], r[1]) for r in rows)["features"] == "ran"     # the new section re-runs it
        n = store.scalar("SELECT count(*) FROM poster_embeddings WHERE encoder LIKE 'pixels%'")
        assert n == len(MOVIES)
        rows = run_pipeline(store, cfg, until="features")
        assert dict((r[0], r[1]) for r in rows)["features"] == "skipped"
