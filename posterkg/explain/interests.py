"""A user's stored interests (``user_interests``) as explanations and profiles cite them.

An :class:`Interest` is one stored row of the interests the reader uses
(:func:`posterkg.interests.edges.resolve`, ``[explain] interests``) with its evidence movies
turned into titles: the ids are the record's own evidence (the user's train movies the
extraction cited), nothing is searched for or added here.

:func:`interest_phrase` writes "a long-term liking for posters with a cool blue palette
(rating-statistics interest, confidence 0.75; from The Matrix, Blade Runner)".
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Interest:
    concept_id: int
    concept: str
    ctype: str
    horizon: str                       # 'long' | 'short'
    polarity: str                      # 'likes' | 'dislikes'
    confidence: float
    evidence: list[tuple[int, str]]    # (movie_id, title) in the record's order
    backend: str
    model: str
    run_id: str

    @property
    def sign(self) -> int:
        return 1 if self.polarity == "likes" else -1

    @property
    def kind(self) -> str:
        return "rating-statistics interest" if self.backend == "stats" else "LLM interest"


def interest_phrase(it: Interest, n_examples: int = 2) -> str:
    """'a long-term liking for posters with <concept> (<kind>, confidence c; from A, B)'."""
    from posterkg.explain.sentences import concept_phrase

    when = "long-term" if it.horizon == "long" else "recent"
    feel = "liking for" if it.polarity == "likes" else "dislike of"
    src = it.kind if it.backend == "stats" else f"{it.kind} ({it.backend})"
    titles = ", ".join(t for _, t in it.evidence[:n_examples])
    tail = f"; from {titles}" if titles else ""
    return (f"a {when} {feel} posters with {concept_phrase(it.ctype, it.concept)} "
            f"({src}, confidence {it.confidence:g}{tail})")
