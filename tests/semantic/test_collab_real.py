"""The collab semantic-id block on the real ML-1M cut (../shared/data): the vectorised lookup
(posterkg.lookup) gives the matrix a plain dict lookup gives, co-liked movies get close vectors, and a `collab`
version's IDs survive a restart unchanged."""

from __future__ import annotations

import numpy as np
import pytest


def test_collab_block_on_real_ml1m(ml1m_db_copy):
    import scipy.sparse as sp

    from posterkg.ratings import POSITIVE_MIN
    from posterkg.semantic import load_codes
    from posterkg.semantic.features import item_features
    from posterkg.semantic.ids import SemanticConfig, build_version
    from posterkg.store import open_store

    with open_store(ml1m_db_copy) as store:
        ids = store.execute("SELECT movie_id FROM movies ORDER BY movie_id").fetchnumpy()["movie_id"].astype(np.int64)
        x, norm, missing = item_features(store, ids, ["collab"], collab_dim=32)
        liked = store.execute(
            "SELECT s.user_id, s.movie_id FROM split s JOIN ratings r USING (user_id, movie_id) "
            f"WHERE s.part = 'train' AND r.rating >= {POSITIVE_MIN}").fetchnumpy()
    # the same likes matrix from a dict lookup
    users = norm.blocks[0].vocab
    upos = {u: j for j, u in enumerate(users)}
    pos = {int(m): i for i, m in enumerate(ids)}
    mat = sp.csr_matrix((np.ones(len(liked["user_id"]), np.float32),
                         ([pos[int(m)] for m in liked["movie_id"]], [upos[int(u)] for u in liked["user_id"]])),
                        shape=(len(ids), len(users)))
    has = mat.getnnz(axis=1) > 0
    assert missing == {"collab": int((~has).sum())} and 0 < missing["collab"] < len(ids) // 4
    np.testing.assert_allclose(np.linalg.norm(x[has], axis=1), 1.0, atol=1e-5)
    assert not x[~has].any()
    # co-liked movies are close: each popular movie's nearest neighbour by the collab vector
    # shares far more of its likers (Jaccard) than a random other movie does
    pop = np.argsort(-mat.getnnz(axis=1))[:300]
    sims = x[pop] @ x[has].T
    cand = np.flatnonzero(has)
    b = (mat > 0).astype(np.float32).tocsr()
    inter = (b[pop] @ b[cand].T).toarray()
    size = np.asarray(b.sum(1)).ravel()
    jac = inter / (size[pop][:, None] + size[cand][None, :] - inter)
    self_col = cand[None, :] == pop[:, None]
    sims[self_col] = -np.inf
    nn = sims.argmax(1)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, len(cand), len(pop))
    nn_jac, rand_jac = jac[np.arange(len(pop)), nn], jac[np.arange(len(pop)), rand]
    assert np.median(nn_jac) > 3 * np.median(rand_jac), (np.median(nn_jac), np.median(rand_jac))

    cfg = SemanticConfig(features=["genres", "collab"], levels=2, codebook_size=32, code_dim=8,
                         hidden=[64], epochs=3, collab_dim=32)
    with open_store(ml1m_db_copy) as store:
        summary = build_version(store, "gc", cfg)
        first = load_codes(store, "gc")
    assert summary["missing"]["collab"] == missing["collab"]
    with open_store(ml1m_db_copy) as store:                 # a restart: the stored IDs, unchanged
        again = load_codes(store, "gc")
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert len({tuple(r) for r in first[1]}) == len(ids)     # unique after disambiguation
