"""The interests runner: users in, validated interests out; resumable, incremental, idempotent.

Resume key ``(user_id, backend, model, vocab_version, spec_hash)`` plus the user's ``input_hash``
(:func:`posterkg.interests.retrieval.input_hashes`): a rerun skips users whose key is ``done``
with the same input hash (and, unless ``retry_failed``, those that ``failed`` with it); a user
whose train ratings, movie concepts or ``user_prefs`` changed is re-extracted, with its previous
interests shown to the model as the current interest nodes; the others are not touched.

Each batch's interests, statuses and the run's counters are written in ONE transaction, so a
``kill -9`` loses at most the batch in flight and never leaves a user with part of an answer.
Failure reasons (``interest_status.reason``): ``truncated``, ``invalid_json``,
``schema_violation``, ``backend_error``, ``out_of_memory``, ``prompt_too_long``. A user with no
liked or disliked train movie is ``done`` with 0 interests and reason ``no_evidence``. When a
whole batch raises, its users are retried one by one so only the one that fails is recorded.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import time
import uuid
from typing import Any, Sequence

import pandas as pd

from posterkg.interests import InterestsConfig, ensure_tables
from posterkg.interests import retrieval as R
from posterkg.interests import spec as S
from posterkg.progress import bar
from posterkg.vlm.knowledge import InvalidOutput

INTEREST_COLUMNS = ["user_id", "concept_id", "horizon", "polarity", "confidence", "evidence",
                    "backend", "model", "vocab_version", "spec_hash", "run_id"]
STATUS_COLUMNS = ["user_id", "backend", "model", "vocab_version", "spec_hash", "input_hash", "status",
                  "reason", "error", "run_id", "attempts", "prompt_tokens", "prompt_budget",
                  "output_tokens", "max_tokens", "movies_total", "movies_in_prompt", "movies_dropped",
                  "interests", "updated_at"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class StatsGenerator:
    """The ``stats`` backend as a generator (see :mod:`posterkg.interests.stats`)."""

    name = "stats"

    def __init__(self):
        from posterkg.interests.stats import MODEL_ID

        self.model = MODEL_ID

    def count_tokens(self, question: str) -> None:
        return None

    def close(self) -> None:
        pass


def short_window(store, cfg: InterestsConfig) -> int:
    return cfg.short_n or int(R.graph_settings(store).get("short_n") or 20)


def extract_interests(store, generator, cfg: InterestsConfig, *, users: Sequence[int] | None = None,
                      params: dict[str, Any] | None = None, desc: str | None = None) -> dict[str, Any]:
    """Extract and store interests for the selected users with ``generator`` (a
    :class:`StatsGenerator` or an adapter of :mod:`posterkg.interests.generate`); return a summary.
    """
    from posterkg.interests import stats as ST

    R.require_graph(store)
    ensure_tables(store)
    short_n = short_window(store, cfg)
    version = R.vocab_version(store, cfg.vocab_version or None)
    vocab = R.load_vocabulary(store, version)
    is_stats = generator.name == "stats"
    shash = ST.spec_hash(cfg, short_n) if is_stats else S.spec_hash(cfg, short_n)
    key = (generator.name, generator.model, version, shash)
    selected = R.select_users(store, users, cfg.limit or None)
    hashes = R.input_hashes(store, selected, stats=is_stats, current_k=cfg.current_k,
                            concepts_per_movie=cfg.concepts_per_movie, extra=f"v{version}")
    previous = {int(u): (s, h, int(a)) for u, s, h, a in store.execute(
        "SELECT user_id, status, input_hash, attempts FROM interest_status WHERE backend = ? AND "
        "model = ? AND vocab_version = ? AND spec_hash = ?", list(key)).fetchall()}
    todo, skipped = [], 0
    for u in selected:
        prev = previous.get(u)
        if prev and prev[1] == hashes.get(u) and (prev[0] == "done" or not cfg.retry_failed):
            skipped += 1
            continue
        todo.append(u)

    run_id = f"{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    run_params = {"batch_size": cfg.batch_size, "limit": cfg.limit or None, "short_n": short_n,
                  "retry_failed": cfg.retry_failed, "users": len(users) if users is not None else None,
                  **(params or {})}
    store.execute("INSERT INTO interest_runs (run_id, backend, model, vocab_version, spec_hash, "
                  "started_at, skipped, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  [run_id, *key, _now(), skipped, json.dumps(run_params, default=str)])

    counts = {"done": 0, "failed": 0, "interests": 0, "prompt_tokens": 0, "output_tokens": 0,
              "dropped_users": 0, "generated": 0}
    reasons: collections.Counter[str] = collections.Counter()
    per: collections.Counter[str] = collections.Counter()

    def write(outcomes: list[tuple[S.Request, list[dict] | None, str | None, str | None, int | None]]):
        rows, status = [], []
        now = _now()
        for req, interests, reason, error, out_tokens in outcomes:
            u = req.user_id
            attempts = previous.get(u, ("", "", 0))[2] + 1
            ok = interests is not None
            for it in interests or []:
                rows.append((u, it["concept_id"], it["horizon"], it["polarity"], it["confidence"],
                             it["evidence"], *key, run_id))
            status.append((u, *key, hashes.get(u, ""), "done" if ok else "failed", reason,
                           (error or "")[:2000] or None, run_id, attempts, req.prompt_tokens or None,
                           req.prompt_budget or None, out_tokens, req.max_tokens or None,
                           req.movies_total, req.movies_in_prompt, req.movies_dropped,
                           len(interests or []), now))
        ids = [o[0].user_id for o in outcomes]
        done = sum(1 for o in outcomes if o[1] is not None)
        with store.transaction() as con:
            con.execute("DELETE FROM user_interests WHERE backend = ? AND model = ? AND vocab_version = ? "
                        "AND spec_hash = ? AND user_id IN (SELECT unnest(?::INTEGER[]))", [*key, ids])
            if rows:
                store.insert_df("user_interests", pd.DataFrame(rows, columns=INTEREST_COLUMNS))
            store.insert_df("interest_status", pd.DataFrame(status, columns=STATUS_COLUMNS), mode="replace")
            con.execute("UPDATE interest_runs SET done = done + ?, failed = failed + ?, "
                        "interests = interests + ? WHERE run_id = ?",
                        [done, len(outcomes) - done, len(rows), run_id])
        counts["done"] += done
        counts["failed"] += len(outcomes) - done
        counts["interests"] += len(rows)
        for req, interests, reason, _, out_tokens in outcomes:
            if interests is None:
                reasons[reason or "backend_error"] += 1
            else:
                per.update(f"{it['horizon']} {it['polarity']}" for it in interests)
            if req.question:
                counts["generated"] += 1
                counts["prompt_tokens"] += req.prompt_tokens
                counts["output_tokens"] += out_tokens or 0
            counts["dropped_users"] += bool(req.movies_dropped)

    t0 = time.perf_counter()
    progress = bar(total=len(todo), desc=desc or f"interests {generator.name}", unit="user")
    try:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            redo = {u for u in batch if u in previous}
            data = R.load_users(store, batch, previous_key=key if redo and not is_stats else None)
            for u in batch:
                if u not in redo:
                    data[u].previous = []
            if is_stats:
                outcomes = []
                for u in batch:
                    req, text = ST.answer(data[u], vocab, cfg, short_n)
                    outcomes.append(_outcome(req, {"raw": text, "finish_reason": "stop"} if text else None,
                                             vocab, cfg))
            else:
                reqs = [S.build_request(data[u], vocab, cfg, short_n, generator.count_tokens)
                        for u in batch]
                ready = [r for r in reqs if r.reason is None]
                results = dict(zip([r.user_id for r in ready], _run_batch(generator, ready)))
                outcomes = [_outcome(r, results.get(r.user_id), vocab, cfg) for r in reqs]
            write(outcomes)
            progress.update(len(batch))
    finally:
        progress.close()
        store.execute("UPDATE interest_runs SET finished_at = ? WHERE run_id = ?", [_now(), run_id])
    seconds = time.perf_counter() - t0
    gen = counts["generated"]
    return {
        "run_id": run_id, "backend": generator.name, "model": generator.model,
        "vocab_version": version, "spec_hash": shash, "selected": len(selected),
        "done": counts["done"], "skipped": skipped, "failed": counts["failed"],
        "interests": counts["interests"], "per_kind": dict(sorted(per.items())),
        "failures": dict(sorted(reasons.items())), "seconds": seconds,
        "users_per_s": len(todo) / seconds if todo and seconds > 0 else 0.0,
        "prompt_tokens_per_user": counts["prompt_tokens"] / gen if gen else 0.0,
        "output_tokens_per_user": counts["output_tokens"] / gen if gen else 0.0,
        "users_truncated": counts["dropped_users"],
    }


def _run_batch(generator, reqs: list[S.Request]) -> list[dict]:
    """Call the generator; if the whole batch raises, retry user by user."""
    if not reqs:
        return []
    try:
        results = generator.generate(reqs)
        if len(results) != len(reqs):
            raise RuntimeError(f"backend returned {len(results)} results for {len(reqs)} users")
        return results
    except Exception as exc:  # noqa: BLE001 - recorded per user below
        if len(reqs) == 1:
            text = f"{type(exc).__name__}: {exc}"
            reason = "out_of_memory" if "out of memory" in text.lower() else "backend_error"
            return [{"raw": None, "finish_reason": None, "output_tokens": None,
                     "error": text[:500], "reason": reason}]
        return [r for req in reqs for r in _run_batch(generator, [req])]


def _outcome(req: S.Request, result: dict | None, vocab, cfg: InterestsConfig):
    """(request, interests | None, reason, error, output_tokens) for one user, validated."""
    if req.reason == "no_evidence":
        return (req, [], "no_evidence", req.error, None)
    if req.reason is not None:
        return (req, None, req.reason, req.error, None)
    if result is None:
        return (req, None, "backend_error", "no result for this user", None)
    out_tokens = result.get("output_tokens")
    if result.get("raw") is None:
        return (req, None, result.get("reason") or "backend_error", result.get("error"), out_tokens)
    try:
        rows = S.check_answer(result["raw"], result.get("finish_reason"), req, vocab, cfg.max_evidence)
        return (req, rows, None, None, out_tokens)
    except InvalidOutput as exc:
        raw = (result["raw"] or "")[:300]
        return (req, None, exc.reason, f"{exc.message}; raw: {raw}" if raw else exc.message, out_tokens)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [(k, summary[k]) for k in (
        "backend", "model", "vocab_version", "spec_hash", "run_id", "done", "skipped", "failed",
        "interests", "users_truncated")]
    rows.append(("users/s", f"{summary['users_per_s']:.2f}"))
    if summary["prompt_tokens_per_user"]:
        rows.append(("prompt tokens/user", f"{summary['prompt_tokens_per_user']:.1f}"))
        rows.append(("output tokens/user", f"{summary['output_tokens_per_user']:.1f}"))
    rows += [(f"interests: {k}", n) for k, n in summary["per_kind"].items()]
    rows += [(f"failed: {r}", n) for r, n in summary["failures"].items()]
    return rows


def run_interests(store, cfg: InterestsConfig, *, users: Sequence[int] | None = None,
                  tag_options: dict | None = None) -> dict[str, Any]:
    """Build the generator from ``cfg`` and extract (the CLI's entry point)."""
    from posterkg.interests.generate import text_generator

    if cfg.backend == "stats":
        generator: Any = StatsGenerator()
        options: dict = {}
    else:
        options = cfg.backend_options(tag_options)
        generator = text_generator(cfg.backend, cfg.model or None, options,
                                   context_tokens=cfg.context_tokens)
    try:
        return extract_interests(store, generator, cfg, users=users, params={"options": options})
    finally:
        generator.close()
