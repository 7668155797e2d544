"""Shared fixtures. Real data lives in ../shared/data (beside the repository); tests that need it
skip with a clear reason when it is absent, and FAIL when ``CI=true`` (:func:`skip_or_fail`), as
do the Chromium and vLLM tests: in CI every prerequisite must be present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("POSTERKG_SHARED", REPO.parent / "shared"))
ML1M = SHARED / "data" / "ml-1m"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("POSTERKG_PROGRESS", "0")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; with ``CI=true`` (where real data and Chromium must be present) fail
    instead, so a missing prerequisite can never pass CI as a silent skip."""
    if in_ci():
        pytest.fail(f"CI=true, so this may not be skipped: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    if not (ML1M / "ratings.dat").is_file():
        skip_or_fail(f"real MovieLens 1M not found at {ML1M} (set POSTERKG_SHARED to the shared/ folder)")
    return ML1M


@pytest.fixture(scope="session")
def ml1m_db(tmp_path_factory, ml1m_dir) -> Path:
    """A database with ../shared ML-1M ingested (posters too) and the temporal split, built once.

    Tests must open it read-only or copy it; see :func:`ml1m_db_copy`.
    """
    from posterkg.ingest.movielens import ingest_movielens
    from posterkg.ingest.posters import scan_posters
    from posterkg.split import make_split
    from posterkg.store import open_store

    db = tmp_path_factory.mktemp("ml1m") / "ml1m.duckdb"
    with open_store(db) as store:
        ingest_movielens(store, ml1m_dir)
        scan_posters(store, ml1m_dir / "posters")
        make_split(store, scheme="temporal", valid=0.1, test=0.1, seed=0)
    return db


@pytest.fixture
def ml1m_db_copy(ml1m_db, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "ml1m.duckdb"
    shutil.copy(ml1m_db, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-VL model folder (tests/tiny_vlm.py), built once per session, offline."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_vlm import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))
