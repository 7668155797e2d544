"""Plain sentences from an :class:`~posterkg.explain.paths.Explanation`.

"Recommended because you recently liked posters with a cool blue palette (The Matrix, Blade
Runner) and this one shares it and its low-key lighting."

"Ranked down because you disliked posters with a harsh red palette (Red Planet), and this one has
it."
"""

from __future__ import annotations

import re

from posterkg.explain import ExplainConfig

# knowledge type -> (noun appended to a concept name, countable: takes "a"/"an",
#                    words that make the noun redundant and keep the article,
#                    words that make the noun redundant and drop it (mass nouns, plurals))
_NOUNS: dict[str, tuple[str, bool, tuple[str, ...], tuple[str, ...]]] = {
    "Color_Palette": ("palette", True, (), ("colours", "colors", "black and white", "tones", "hues")),
    "Visual_Mood": ("mood", True, ("atmosphere", "feel"), ()),
    "Composition": ("composition", True, ("layout", "subject", "framing", "frame", "shot"), ("space",)),
    "Lighting": ("lighting", False, ("glow", "silhouette"), ("contrast", "light", "shadows")),
    "Texture": ("texture", True, ("finish",), ("grain",)),
    "Character_Presentation": ("", False, ("single", "group", "lone", "close-up"), ()),
    "Era_Style": ("style", True, ("look", "aesthetic"), ()),
    "Genre_Visual": ("imagery", False, (), ()),
    "Typography": ("typography", False, (), ("text", "title", "font", "lettering", "letters", "type")),
    "Others": ("", False, (), ()),
}


def _article(word: str) -> str:
    return "an" if re.match(r"[aeiou]", word, re.I) and not re.match(r"(uni|use|one)", word, re.I) else "a"


def _has(name: str, words) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", name) for w in words)


def concept_phrase(ctype: str, name: str, *, article: bool = True) -> str:
    """'Color_Palette', 'cool blue' -> 'a cool blue palette' (or 'cool blue palette');
    'Typography', 'some text' -> 'some text'; 'Lighting', 'high contrast' -> 'high contrast'."""
    name = " ".join(str(name).replace("_", " ").split()).strip().lower()
    noun, countable, keep, mass = _NOUNS.get(ctype, ("", False, (), ()))
    if _has(name, mass) or (noun and not countable and _has(name, keep)):
        phrase, countable = name, False
    elif noun and _has(name, (noun,)):
        phrase = name
    elif _has(name, keep):
        phrase, countable = name, True
    elif noun:
        phrase = f"{name} {noun}"
    else:
        phrase, countable = name, False
    if re.match(r"(some|no|little|much|many|two|three|several)\b", phrase):
        countable = False
    if article and countable:
        return f"{_article(phrase)} {phrase}"
    return phrase


def _titles(examples, n: int) -> str:
    names = [t for _, t, _ in examples[:n]]
    return f" ({', '.join(names)})" if names else ""


def positive_sentence(ex, cfg: ExplainConfig) -> str:
    if not ex.cited:
        if ex.method == "graph":
            return ("Recommended for reasons outside its poster: it shares no visual concept with "
                    "the posters you liked.")
        return ("Recommended mainly for reasons outside its poster (what people with your ratings "
                "liked), not for a visual concept you are known to like.")
    first, rest = ex.cited[0], ex.cited[1:]
    ph = concept_phrase(first.ctype, first.concept)
    if first.model_horizon is not None:
        # the model's own split (sequence models): its short-term part carries this concept
        recently = first.model_horizon == "short"
        examples = sorted(first.liked, key=lambda x: -int(x[2])) if recently else first.liked
    else:
        recently = any(r for _, _, r in first.liked[: cfg.examples]) or first.pref_short > 0
        examples = first.liked
    if first.liked:
        when = "recently " if recently else ("over time " if first.model_horizon == "long" else "")
        s = (f"Recommended because you {when}liked posters with {ph}"
             f"{_titles(examples, cfg.examples)} and this one shares it")
    else:
        when = "recent" if recently else "long-term"
        s = f"Recommended because your {when} taste leans to posters with {ph} and this one has it"
    if rest:
        s += "".join(f" and its {concept_phrase(e.ctype, e.concept, article=False)}" for e in rest)
    return s + "."


def negative_sentence(ex, cfg: ExplainConfig) -> str | None:
    if not ex.against:
        return None
    first, rest = ex.against[0], ex.against[1:]
    ph = concept_phrase(first.ctype, first.concept)
    if first.disliked:
        s = f"Ranked down because you disliked posters with {ph}{_titles(first.disliked, cfg.examples)}, and this one has it"
    else:
        s = f"Ranked down because you tend to dislike posters with {ph}, and this one has it"
    if rest:
        s += ", as well as " + " and ".join(concept_phrase(e.ctype, e.concept) for e in rest)
    return s + "."


def interest_sentence(concepts, cfg: ExplainConfig) -> str | None:
    """The stored interests behind cited concepts (``ConceptEvidence.interests``), one per
    concept, the most confident first: "You have a long-term liking for posters with low-key
    lighting (LLM interest (vllm), confidence 0.75; from Chinatown, The Third Man)." Only
    concepts the attribution cited carry interests (see ``Explainer.explain``)."""
    from posterkg.explain.interests import interest_phrase

    phrases = [interest_phrase(e.interests[0], cfg.examples) for e in concepts if e.interests]
    if not phrases:
        return None
    return "You have " + " and ".join(phrases) + "."


def horizon_sentence(ex) -> str | None:
    """Sequence models: how much of the score comes from the user's recent ratings."""
    h = getattr(ex, "horizon", None)
    if not h:
        return None
    s, lo = h["short"], h["long"]
    tot = abs(s) + abs(lo)
    if tot <= 0:
        return None
    share = 100 * abs(s) / tot
    lead = "mostly from your recent ratings" if share >= 50 else "mostly from your long-term taste"
    return (f"The model's score comes {lead}: {share:.0f}% from its short-term part (your latest "
            f"ratings, self-attention) and {100 - share:.0f}% from its long-term part.")


def explain_sentences(ex, cfg: ExplainConfig | None = None) -> list[str]:
    """The positive sentence (then the stored interests behind its concepts), the negative one
    when a disliked concept counts against (then the stored dislikes behind it), then (sequence
    models) the model's own short- vs long-term split."""
    cfg = cfg or ExplainConfig()
    out = [positive_sentence(ex, cfg)]
    pro = interest_sentence(ex.cited, cfg)
    if pro:
        out.append(pro)
    neg = negative_sentence(ex, cfg)
    if neg:
        out.append(neg)
        con = interest_sentence(ex.against, cfg)
        if con:
            out.append(con)
    hz = horizon_sentence(ex)
    if hz:
        out.append(hz)
    return out
