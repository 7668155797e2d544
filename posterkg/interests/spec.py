r"""The question put to the model for one user, its JSON schema, token budgets and validation.

The answer::

    {"interests": [{"type": T, "concept": C, "horizon": "long"|"short",
                    "polarity": "likes"|"dislikes", "confidence": L, "movies": [id, ...]}, ...]}

with 1 to ``max_interests`` items. Each item is one branch of an ``anyOf``, one branch per
(knowledge type, horizon, polarity): ``type``, ``horizon`` and ``polarity`` are ``const``,
``concept`` is an ``enum`` of the frozen vocabulary of that type (the closed mode of tagging),
``confidence`` an enum of dyadic levels, and ``movies`` an array of 1 to ``max_evidence`` ids from
an ``enum`` of the user's own movies shown in the prompt: liked ones (rating >= 4) for ``likes``,
disliked ones (<= 2) for ``dislikes``, and for ``short`` only movies of the short-term window. A
(horizon, polarity) whose pool is empty has no branch, so a user without dislikes cannot be given
one. Property order is fixed (xgrammar follows it).

Budget: the grammar's language is finite, so :func:`max_answer_bytes` is the UTF-8 length of the
longest valid answer (with the ``", "`` / ``": "`` separators of xgrammar without free
whitespace, :data:`posterkg.vlm.knowledge.SEPARATORS`, which also bound compact output) and
``max_tokens = bytes + 1``: with a byte-level BPE tokenizer every token is at least one byte (see
``posterkg.vlm.knowledge``). The prompt gets ``context_tokens - max_tokens`` tokens (or
``max_prompt_tokens``), counted with the model's tokenizer on the fully rendered chat prompt
(without a tokenizer: UTF-8 bytes plus a margin, an upper bound for byte-level tokenizers); the
oldest history lines are dropped until it fits, and the count is recorded.

Validation (:func:`check_answer`) is exactly ``jsonschema`` validation against the schema sent
(the branches are told apart by their three ``const`` fields, so the item is validated against
the one branch that can match; ``tests/test_interests.py`` checks the equivalence), then
evidence ids are de-duplicated, repeated (concept, horizon, polarity) items merged (highest
confidence, union of evidence up to ``max_evidence``) and contradictions (one concept liked and
disliked in one horizon) resolved to the more confident side, dropped on a tie.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

from posterkg.interests import CONFIDENCE_LEVELS, HORIZONS, POLARITIES, InterestsConfig
from posterkg.interests.retrieval import Interaction, UserData, Vocabulary
from posterkg.vlm.knowledge import SEPARATORS, InvalidOutput, _json_literal_bytes, parse_answer

PROMPT_VERSION = 1
#: failure classes of this stage (``interest_status.reason``)
REASONS = ("truncated", "invalid_json", "schema_violation", "backend_error", "out_of_memory",
           "prompt_too_long")
TEMPLATE_MARGIN = 64     # tokens of chat template around the question when no tokenizer counts them

INSTRUCTIONS = (
    "You describe what a movie watcher likes and dislikes in movie posters. Below is the user's "
    "rating history, oldest first: each movie with the visual concepts its poster shows (ids of "
    "the vocabulary listed first). Write the user's interests on concepts of that vocabulary: "
    "long-term ones (stable over the whole history) and short-term ones (the short-term window), "
    "likes and dislikes, each with a confidence and the ids of 1 to {E} movies of the history that "
    "support it (liked movies support likes, disliked movies support dislikes; short-term "
    "interests cite movies of the window)."
)


@dataclasses.dataclass
class Request:
    """One user's question, schema and budgets (``reason`` set when it cannot be asked)."""

    user_id: int
    question: str = ""
    json_schema: dict[str, Any] | None = None
    max_tokens: int = 0
    prompt_tokens: int = 0
    prompt_budget: int = 0
    movies_total: int = 0
    movies_in_prompt: int = 0
    movies_dropped: int = 0
    pools: dict[tuple[str, str], list[int]] = dataclasses.field(default_factory=dict)
    reason: str | None = None
    error: str | None = None


def spec_hash(cfg: InterestsConfig, short_n: int) -> str:
    """Hash of everything that shapes the question and schema (part of the resume key)."""
    blob = {"v": PROMPT_VERSION, "instructions": INSTRUCTIONS, "levels": list(CONFIDENCE_LEVELS),
            "short_n": short_n, **{k: getattr(cfg, k) for k in (
                "max_interests", "max_evidence", "current_k", "context_tokens", "max_prompt_tokens",
                "max_tokens", "concepts_per_movie", "concepts_in_prompt", "title_chars")}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


# -- schema ----------------------------------------------------------------------------------------
def _branch(ctype: str, names: list[str], horizon: str, polarity: str, pool: list[int],
            max_evidence: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "type": {"const": ctype},
            "concept": {"enum": list(names)},
            "horizon": {"const": horizon},
            "polarity": {"const": polarity},
            "confidence": {"enum": list(CONFIDENCE_LEVELS)},
            "movies": {"type": "array", "items": {"enum": list(pool)}, "minItems": 1,
                       "maxItems": max_evidence},
        },
        "required": ["type", "concept", "horizon", "polarity", "confidence", "movies"],
        "additionalProperties": False,
    }


def json_schema(vocab: Vocabulary, pools: dict[tuple[str, str], list[int]], max_interests: int,
                max_evidence: int) -> dict[str, Any] | None:
    """The answer's schema for one user; None when no (horizon, polarity) has evidence."""
    branches = [_branch(t, vocab.names(t), h, p, pools[(h, p)], max_evidence)
                for t in vocab.types for h in HORIZONS for p in POLARITIES if pools.get((h, p))]
    if not branches:
        return None
    return {
        "type": "object",
        "properties": {"interests": {"type": "array", "items": {"anyOf": branches},
                                     "minItems": 1, "maxItems": max_interests}},
        "required": ["interests"],
        "additionalProperties": False,
    }


def max_answer_bytes(schema: dict[str, Any], separators: tuple[str, str] = SEPARATORS) -> int:
    """UTF-8 bytes of the longest answer ``schema`` admits (see the module docstring)."""
    comma, colon = separators
    arr = schema["properties"]["interests"]

    def item_bytes(b: dict[str, Any]) -> int:
        pr = b["properties"]
        ev = pr["movies"]
        ev_bytes = (len("[") + ev["maxItems"] * max(_json_literal_bytes(m) for m in ev["items"]["enum"])
                    + (ev["maxItems"] - 1) * len(comma) + len("]"))
        fields = [
            ("type", _json_literal_bytes(pr["type"]["const"])),
            ("concept", max(_json_literal_bytes(v) for v in pr["concept"]["enum"])),
            ("horizon", _json_literal_bytes(pr["horizon"]["const"])),
            ("polarity", _json_literal_bytes(pr["polarity"]["const"])),
            ("confidence", max(_json_literal_bytes(v) for v in pr["confidence"]["enum"])),
            ("movies", ev_bytes),
        ]
        return (len("{") + sum(len(f'"{k}"') + len(colon) + v for k, v in fields)
                + (len(fields) - 1) * len(comma) + len("}"))

    item = max(item_bytes(b) for b in arr["items"]["anyOf"])
    n = arr["maxItems"]
    return len('{"interests"') + len(colon) + len("[") + n * item + (n - 1) * len(comma) + len("]}")


def max_tokens(schema: dict[str, Any]) -> int:
    """A token budget that always fits a complete answer: longest answer in bytes + 1 (EOS)."""
    return max_answer_bytes(schema) + 1


# -- the question ----------------------------------------------------------------------------------
def _fmt_conf(x: float) -> str:
    return f"{x:g}"


def _line(it: Interaction, cfg: InterestsConfig) -> str:
    title = it.title or f"movie {it.movie_id}"
    if len(title) > cfg.title_chars:
        title = title[: cfg.title_chars - 1].rstrip() + "~"
    year = f" ({it.year})" if it.year else ""
    cids = " ".join(str(c) for c, _ in it.concepts[: cfg.concepts_per_movie]) or "-"
    return f"{it.movie_id} | {title}{year} | {it.rating:g} | {cids}"


def _current(user: UserData, vocab: Vocabulary, k: int) -> list[str]:
    if k <= 0:
        return []
    lines: list[str] = []
    if user.previous:
        lines.append("Current interests (previous extraction, confidence):")
        for h in HORIZONS:
            for p in POLARITIES:
                rows = [r for r in user.previous if r[1] == h and r[2] == p and r[0] in vocab.by_id][:k]
                if rows:
                    lines.append(f"{h} {p}: " + "; ".join(
                        f"{c} {vocab.by_id[c][1]} ({_fmt_conf(conf)})" for c, _, _, conf in rows))
    elif user.prefs:
        lines.append("Current interests (rating statistics, score = log lift):")
        for h in HORIZONS:
            for p, sign in (("likes", 1), ("dislikes", -1)):
                rows = [r for r in user.prefs if r[1] == h and r[2] * sign > 0 and r[0] in vocab.by_id][:k]
                if rows:
                    lines.append(f"{h} {p}: " + "; ".join(
                        f"{c} {vocab.by_id[c][1]} ({s:+.2f})" for c, _, s in rows))
    return lines


def _vocab_lines(vocab: Vocabulary, per_type: int) -> list[str]:
    lines = ["Concepts by knowledge type (id name):"]
    for t in vocab.types:
        ids = vocab.ids(t)
        more = f" (and {len(ids) - per_type} more)" if len(ids) > per_type else ""
        lines.append(f"{t}: " + "; ".join(f"{c} {vocab.by_id[c][1]}" for c in ids[:per_type]) + more)
    return lines


def question_text(user: UserData, vocab: Vocabulary, cfg: InterestsConfig, short_n: int,
                  dropped: int) -> str:
    """The user-turn text with the ``dropped`` oldest interactions left out."""
    hist = user.history
    n = len(hist)
    window_start = max(0, n - short_n)
    kept = list(range(dropped, n))
    head = [INSTRUCTIONS.format(E=cfg.max_evidence), ""] + _vocab_lines(vocab, cfg.concepts_in_prompt)
    body = ["", f"User {user.user_id}: {n} train ratings, oldest first, one per line: movie id | "
            "title (year) | rating 1-5 | concept ids of its poster, strongest first."]
    if dropped:
        body.append(f"(The {dropped} oldest ratings are left out to fit the prompt budget.)")
    earlier = [i for i in kept if i < window_start]
    window = [i for i in kept if i >= window_start]
    if earlier:
        body.append("Earlier:")
        body += [_line(hist[i], cfg) for i in earlier]
    if window:
        body.append(f"Short-term window (the last {n - window_start} ratings):")
        body += [_line(hist[i], cfg) for i in window]
    disliked = [str(hist[i].movie_id) for i in kept if hist[i].sign < 0]
    body.append("Disliked (rating <= 2): " + (", ".join(disliked) if disliked else "none"))
    body += _current(user, vocab, cfg.current_k)
    tail = [
        "",
        'Answer with JSON only: {"interests": [{"type": ..., "concept": ..., "horizon": "long" or '
        '"short", "polarity": "likes" or "dislikes", "confidence": ..., "movies": [movie ids]}, ...]} '
        f"with 1 to {cfg.max_interests} interests, strongest first.",
        "concept is a concept name of its type; confidence is one of "
        + ", ".join(_fmt_conf(c) for c in CONFIDENCE_LEVELS) + ".",
    ]
    return "\n".join(head + body + tail)


def pools_for(user: UserData, short_n: int, dropped: int) -> dict[tuple[str, str], list[int]]:
    hist = user.history
    n = len(hist)
    window_start = max(0, n - short_n)
    pools: dict[tuple[str, str], list[int]] = {}
    for i in range(dropped, n):
        it = hist[i]
        if it.sign == 0:
            continue
        p = "likes" if it.sign > 0 else "dislikes"
        pools.setdefault(("long", p), []).append(it.movie_id)
        if i >= window_start:
            pools.setdefault(("short", p), []).append(it.movie_id)
    return {k: sorted(set(v)) for k, v in pools.items()}


def build_request(user: UserData, vocab: Vocabulary, cfg: InterestsConfig, short_n: int,
                  count_tokens: Callable[[str], int] | None) -> Request:
    """Retrieval text within the budget, the schema and its max_tokens for one user.

    ``count_tokens(question)`` counts the tokens of the fully rendered prompt (chat template
    included); when it is ``None`` or returns ``None``, UTF-8 bytes + :data:`TEMPLATE_MARGIN`.
    """
    n = len(user.history)
    req = Request(user.user_id, movies_total=n)
    full_pools = pools_for(user, short_n, 0)
    schema_all = json_schema(vocab, full_pools, cfg.max_interests, cfg.max_evidence)
    if schema_all is None:
        req.reason, req.error = "no_evidence", "no liked or disliked train movie: nothing to ask"
        return req
    # an upper bound for every truncation (pools only shrink): computed once
    answer = cfg.max_tokens or max_tokens(schema_all)
    budget = cfg.max_prompt_tokens or (cfg.context_tokens - answer)
    req.prompt_budget = budget
    def count(q: str) -> int:
        n = count_tokens(q) if count_tokens is not None else None
        return n if n is not None else len(q.encode("utf-8")) + TEMPLATE_MARGIN

    def size(dropped: int) -> int:
        return count(question_text(user, vocab, cfg, short_n, dropped))

    dropped = 0
    tokens = size(0)
    if tokens > budget:
        lo, hi = 1, n      # the smallest number of dropped lines that fits (size is monotone)
        if size(n) > budget:
            req.reason = "prompt_too_long"
            req.error = (f"even with no history line the prompt takes {size(n)} tokens > budget "
                         f"{budget} (context_tokens {cfg.context_tokens}, answer {answer})")
            req.prompt_tokens = size(n)
            return req
        while lo < hi:
            mid = (lo + hi) // 2
            if size(mid) <= budget:
                hi = mid
            else:
                lo = mid + 1
        dropped = lo
        tokens = size(dropped)
    pools = pools_for(user, short_n, dropped)
    schema = json_schema(vocab, pools, cfg.max_interests, cfg.max_evidence)
    if schema is None:
        req.reason = "prompt_too_long"
        req.error = f"the budget ({budget} tokens) leaves no liked or disliked movie in the prompt"
        return req
    req.question = question_text(user, vocab, cfg, short_n, dropped)
    req.json_schema = schema
    req.max_tokens = cfg.max_tokens or max_tokens(schema)
    req.prompt_tokens = tokens
    req.movies_in_prompt = n - dropped
    req.movies_dropped = dropped
    req.pools = pools
    return req


# -- validation ------------------------------------------------------------------------------------
_ENUM_SETS: dict[int, tuple[list, frozenset]] = {}


def _fast_enum(validator, enums, instance, schema):
    """jsonschema's ``enum`` with a set lookup for scalar enums (same result, JSON equality:
    ``true`` is not ``1``; ``1.0`` is ``1``)."""
    hit = _ENUM_SETS.get(id(enums))
    if hit is None or hit[0] is not enums:
        if not all(isinstance(e, (int, float, str)) and not isinstance(e, bool) for e in enums):
            from jsonschema._keywords import enum as slow

            yield from slow(validator, enums, instance, schema)
            return
        if len(_ENUM_SETS) > 4096:
            _ENUM_SETS.clear()
        hit = _ENUM_SETS[id(enums)] = (enums, frozenset(enums))
    if isinstance(instance, bool) or not isinstance(instance, (int, float, str)) \
            or instance not in hit[1]:
        yield __import__("jsonschema").ValidationError(f"{instance!r} is not one of {enums!r}"[:300])


def _validator_cls():
    import jsonschema

    global _VCLS
    try:
        return _VCLS
    except NameError:
        _VCLS = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"enum": _fast_enum})
        return _VCLS


def _first_error(validator, obj, prefix: str = "") -> None:
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "<root>"
        raise InvalidOutput("schema_violation", f"{prefix}{where}: {e.message}"[:500])


def validate(obj: Any, schema: dict[str, Any]) -> None:
    """Raise :class:`InvalidOutput` (``schema_violation``) unless ``obj`` satisfies ``schema``."""
    cls = _validator_cls()
    arr = schema["properties"]["interests"]
    shell = {**schema, "properties": {"interests": {**arr, "items": {"type": "object"}}}}
    _first_error(cls(shell), obj)
    branches = {(b["properties"]["type"]["const"], b["properties"]["horizon"]["const"],
                 b["properties"]["polarity"]["const"]): b for b in arr["items"]["anyOf"]}
    for i, item in enumerate(obj["interests"]):
        key = (item.get("type"), item.get("horizon"), item.get("polarity"))
        branch = branches.get(key) if all(isinstance(k, str) for k in key) else None
        if branch is None:
            raise InvalidOutput("schema_violation",
                                f"interests/{i}: no branch for type/horizon/polarity {key!r}"[:500])
        _first_error(cls(branch), item, prefix=f"interests/{i}/")


def normalise(obj: dict[str, Any], vocab: Vocabulary, max_evidence: int) -> list[dict[str, Any]]:
    """Validated answer -> interest rows (concept_id, horizon, polarity, confidence, evidence)."""
    by_name = vocab.by_name
    merged: dict[tuple[int, str, str], dict[str, Any]] = {}
    for it in obj["interests"]:
        cid = by_name[(it["type"], it["concept"])]
        key = (cid, it["horizon"], it["polarity"])
        ev = list(dict.fromkeys(int(m) for m in it["movies"]))
        if key in merged:
            old = merged[key]
            old["confidence"] = max(old["confidence"], float(it["confidence"]))
            old["evidence"] = list(dict.fromkeys(old["evidence"] + ev))[:max_evidence]
        else:
            merged[key] = {"concept_id": cid, "horizon": it["horizon"], "polarity": it["polarity"],
                           "confidence": float(it["confidence"]), "evidence": ev[:max_evidence]}
    out = []
    for (cid, h, p), row in merged.items():
        other = merged.get((cid, h, "dislikes" if p == "likes" else "likes"))
        if other is not None and other["confidence"] >= row["confidence"]:
            continue    # contradicted by an at least as confident opposite (a tie drops both)
        out.append(row)
    return out


def check_answer(raw: str | None, finish_reason: str | None, req: Request,
                 vocab: Vocabulary, max_evidence: int) -> list[dict[str, Any]]:
    """Parse, validate against ``req.json_schema``, normalise; raises :class:`InvalidOutput`."""
    obj = parse_answer(raw, finish_reason)
    validate(obj, req.json_schema)
    return normalise(obj, vocab, max_evidence)
