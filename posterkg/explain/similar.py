"""Item-item neighbours: cosine similarity of the learned movie embeddings, with the concepts the
two posters share.

With a model, the embeddings are ``model.movie_embeddings()`` (rows in the order of
``model.movie_ids``, the model's id vocabulary). Without one (``source = "concepts"``) the movies are compared by their
concept-weight vectors (``movie_concept_edges``), which only sees the posters.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from posterkg.errors import InputError
from posterkg.explain.paths import Knowledge, movie_concept_matrix
from posterkg.lookup import find


@dataclasses.dataclass
class Neighbour:
    movie_id: int
    title: str
    similarity: float
    shared: list[tuple[int, str, str, float]]   # (concept_id, concept, ctype, min weight), strongest first


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


class Similar:
    """Nearest movies by cosine similarity, computed once per embedding matrix."""

    def __init__(self, knowledge: Knowledge, model=None):
        self.k = knowledge
        if model is not None:
            emb = model.movie_embeddings()
            emb = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
            self.movie_ids = np.asarray(model.movie_ids).astype(int)
            self.source = "model"
        else:
            self.movie_ids = np.array(sorted(knowledge.titles), dtype=int)
            mat, _ = movie_concept_matrix(knowledge, self.movie_ids)
            emb = mat.toarray()
            self.source = "concepts"
        if emb.shape[0] != len(self.movie_ids):
            raise InputError(f"{emb.shape[0]} movie embeddings for {len(self.movie_ids)} movies")
        self.emb = _normalise(emb.astype(np.float32))
        self.has_emb = np.linalg.norm(emb, axis=1) > 0

    def shared_concepts(self, a: int, b: int) -> list[tuple[int, str, str, float]]:
        ca, cb = self.k.concepts_of(a), self.k.concepts_of(b)
        out = [(c, self.k.name(c), self.k.ctype(c), min(ca[c], cb[c])) for c in ca.keys() & cb.keys()]
        return sorted(out, key=lambda t: (-t[3], t[0]))

    def neighbours(self, movie_id: int, k: int = 10) -> list[Neighbour]:
        movie_id = int(movie_id)
        self.k.check_movie(movie_id)
        pos, ok = find(self.movie_ids, [movie_id])
        if not ok[0]:
            raise InputError(f"movie {movie_id} has no embedding")
        i = int(pos[0])
        if not self.has_emb[i]:
            return []
        sims = self.emb @ self.emb[i]
        sims[i] = -np.inf
        sims[~self.has_emb] = -np.inf
        k = min(k, int(np.isfinite(sims).sum()))
        top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.array([], dtype=int)
        top = top[np.lexsort((self.movie_ids[top], -sims[top]))]
        return [Neighbour(int(self.movie_ids[j]), self.k.title(int(self.movie_ids[j])), float(sims[j]),
                          self.shared_concepts(movie_id, int(self.movie_ids[j]))) for j in top]
