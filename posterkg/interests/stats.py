"""``stats``: the deterministic, weight-free interests backend, from ``user_prefs``.

Every ``user_prefs`` row (user, concept, horizon, score) of a concept in the vocabulary becomes
one interest:

* ``polarity`` = ``likes`` when score > 0, ``dislikes`` when < 0;
* ``confidence`` = ``1 - exp(-|score|)`` rounded to the nearest level of
  :data:`posterkg.interests.CONFIDENCE_LEVELS` (a two-fold lift, score ln 2, gives 0.5);
* ``evidence``: up to ``max_evidence`` movies of the matching pool that show the concept (liked
  train movies for likes, disliked ones for dislikes; for ``short`` only the last ``short_n``
  train interactions, the window ``user_prefs`` used), the heaviest poster-concept edge first,
  then the most recent. A preference that no such movie shows (a score carried by absence, e.g.
  with ``[graph] min_support = 0``) has no evidence and is left out.

The answer is written as the same JSON object an LLM returns, against a schema built the same way
(full history, no truncation, ``maxItems`` = the number of rows) and goes through the same
validation and storage, so ``stats`` is the reference the LLM backends are compared with.
"""

from __future__ import annotations

import hashlib
import json
import math

from posterkg.interests import CONFIDENCE_LEVELS, InterestsConfig
from posterkg.interests.retrieval import UserData, Vocabulary
from posterkg.interests.spec import Request, json_schema, pools_for

MODEL_ID = "user_prefs-v1"     # bump when a rule changes: it is part of the resume key


def confidence(score: float) -> float:
    c = 1.0 - math.exp(-abs(score))
    return min(CONFIDENCE_LEVELS, key=lambda lv: (abs(lv - c), lv))


def spec_hash(cfg: InterestsConfig, short_n: int) -> str:
    blob = {"stats": MODEL_ID, "levels": list(CONFIDENCE_LEVELS), "max_evidence": cfg.max_evidence,
            "short_n": short_n}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def answer(user: UserData, vocab: Vocabulary, cfg: InterestsConfig, short_n: int) -> tuple[Request, str]:
    """(request with its schema, the answer's JSON text) for one user."""
    hist = user.history
    n = len(hist)
    window = {it.movie_id for it in hist[max(0, n - short_n):]}
    order = {it.movie_id: i for i, it in enumerate(hist)}
    weight = {(it.movie_id, c): w for it in hist for c, w in it.concepts}
    shows: dict[int, list[int]] = {}
    for it in hist:
        for c, _ in it.concepts:
            shows.setdefault(c, []).append(it.movie_id)
    req = Request(user.user_id, movies_total=n, movies_in_prompt=n)
    items = []
    for cid, horizon, score in user.prefs:
        if score == 0 or cid not in vocab.by_id:
            continue
        sign = 1 if score > 0 else -1
        cands = [m for m in shows.get(cid, [])
                 if hist[order[m]].sign == sign and (horizon == "long" or m in window)]
        if not cands:
            continue
        cands.sort(key=lambda m: (-weight[(m, cid)], -order[m]))
        ctype, name = vocab.by_id[cid]
        items.append({"type": ctype, "concept": name, "horizon": horizon,
                      "polarity": "likes" if sign > 0 else "dislikes",
                      "confidence": confidence(score), "movies": cands[: cfg.max_evidence]})
    req.pools = pools_for(user, short_n, 0)
    if not items:
        req.reason, req.error = "no_evidence", "no user_prefs row with an evidence movie"
        return req, ""
    req.json_schema = json_schema(vocab, req.pools, len(items), cfg.max_evidence)
    text = json.dumps({"interests": items})
    req.question = ""
    return req, text
