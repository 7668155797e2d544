"""A user's visual profile: long-term and short-term concept shares per knowledge type.

Shares come from ``user_prefs``: within a (horizon, knowledge type) the positive scores are
normalised to sum to 1, so "42% of the colour-palette taste is cool blue". Disliked concepts
(negative scores) are listed apart. When ``user_prefs`` is absent the profile is computed from the
train positives and ``movie_concept_edges`` (long = all positives, short = the last ``recent``),
and ``Profile.source`` says so. When the graph's user -> concept edges are stored interests
(``[graph] user_interests``), the shares are those interests' signed confidences
(``source = 'user_interests'``).

``Profile.interests`` lists the user's stored interests (``user_interests`` of
``Knowledge.interest_source``, see ``[explain] interests``) with their evidence movies, the ids
the record holds turned into titles; :meth:`Profile.interests_by_type` groups them per knowledge
type, horizon and polarity.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from posterkg.explain import ExplainConfig
from posterkg.explain.paths import Knowledge


@dataclasses.dataclass
class Change:
    concept_id: int
    concept: str
    ctype: str
    long_share: float
    short_share: float

    @property
    def delta(self) -> float:
        return self.short_share - self.long_share


@dataclasses.dataclass
class Profile:
    user_id: int
    source: str                      # 'user_prefs' | 'user_interests' | 'interactions'
    shares: pd.DataFrame             # ctype, concept_id, concept, long_share, short_share, long_score, short_score
    rising: list[Change]             # short-term share grew the most
    falling: list[Change]            # short-term share fell the most
    new: list[Change]                # in the short term only
    dropped: list[Change]            # in the long term only
    dislikes: list[tuple[int, str, str, float]]   # (concept_id, concept, ctype, score), most disliked first
    interests: list = dataclasses.field(default_factory=list)   # posterkg.explain.interests.Interest
    interest_source: str | None = None                          # InterestSource.label(), or None

    def interests_by_type(self, top: int = 5) -> dict[str, dict[tuple[str, str], list]]:
        """ctype -> (horizon, polarity) -> up to ``top`` interests, most confident first
        (types in name order; long before short, likes before dislikes)."""
        out: dict[str, dict[tuple[str, str], list]] = {}
        for it in sorted(self.interests, key=lambda i: (i.ctype, i.horizon, i.polarity != "likes", -i.confidence,
                                                        i.concept)):
            group = out.setdefault(it.ctype, {}).setdefault((it.horizon, it.polarity), [])
            if len(group) < top:
                group.append(it)
        return out

    def by_type(self, top: int = 5) -> dict[str, pd.DataFrame]:
        out = {}
        for t, g in self.shares.groupby("ctype", sort=True):
            g = g.assign(_m=g[["long_share", "short_share"]].max(axis=1)).sort_values("_m", ascending=False)
            g = g[g._m > 0]
            if len(g):
                out[str(t)] = g.drop(columns="_m").head(top)
        return out

    def summary(self, n: int = 3) -> list[str]:
        """Plain sentences on what changed between the long and the short term."""
        out = []
        if self.rising:
            out.append("Lately more: " + ", ".join(
                f"{c.concept} ({c.ctype}, {c.long_share:.0%} -> {c.short_share:.0%})" for c in self.rising[:n]) + ".")
        if self.falling:
            out.append("Lately less: " + ", ".join(
                f"{c.concept} ({c.ctype}, {c.long_share:.0%} -> {c.short_share:.0%})" for c in self.falling[:n]) + ".")
        if self.new:
            out.append("New in the short term: " + ", ".join(f"{c.concept} ({c.ctype})" for c in self.new[:n]) + ".")
        if self.dropped:
            out.append("Gone from the short term: " + ", ".join(f"{c.concept} ({c.ctype})" for c in self.dropped[:n]) + ".")
        if self.dislikes:
            out.append("Dislikes: " + ", ".join(f"{name} ({t})" for _, name, t, _ in self.dislikes[:n]) + ".")
        if not out:
            out.append("No change between the long and the short term.")
        return out


def _prefs_from_interactions(k: Knowledge, user_id: int, recent: int) -> pd.DataFrame:
    rows = []
    pos = k.interactions(user_id, +1).movie_id.astype(int).tolist()
    neg = k.interactions(user_id, -1).movie_id.astype(int).tolist()
    for horizon, p, n in (("long", pos, neg), ("short", pos[:recent], neg[:recent])):
        acc: dict[int, float] = {}
        for movies, sign in ((p, 1.0), (n, -1.0)):
            for m in movies:
                for c, w in k.concepts_of(m).items():
                    acc[c] = acc.get(c, 0.0) + sign * w
        tot = len(p) + len(n) or 1
        rows += [(c, horizon, s / tot) for c, s in acc.items()]
    return pd.DataFrame(rows, columns=["concept_id", "horizon", "score"])


def user_profile(k: Knowledge, user_id: int, cfg: ExplainConfig | None = None, top: int = 5) -> Profile:
    """Build the profile of ``user_id``."""
    cfg = cfg or ExplainConfig()
    k.check_user(user_id)
    prefs = k.prefs(user_id)
    source = k.prefs_source
    if len(prefs) == 0:
        prefs = _prefs_from_interactions(k, user_id, cfg.recent)
        source = "interactions"
    prefs = prefs.assign(concept_id=prefs.concept_id.astype(int), score=prefs.score.astype(float))
    prefs["ctype"] = [k.ctype(c) for c in prefs.concept_id]
    piv = prefs.pivot_table(index=["concept_id", "ctype"], columns="horizon", values="score", aggfunc="sum")
    piv = piv.reindex(columns=["long", "short"]).fillna(0.0).reset_index()
    piv.columns = ["concept_id", "ctype", "long_score", "short_score"]
    for h in ("long", "short"):
        pos = piv[f"{h}_score"].clip(lower=0)
        tot = pos.groupby(piv.ctype).transform("sum")
        piv[f"{h}_share"] = (pos / tot.where(tot > 0, 1.0)).astype(float)
    piv["concept"] = [k.name(c) for c in piv.concept_id]
    shares = piv[["ctype", "concept_id", "concept", "long_share", "short_share", "long_score", "short_score"]]
    shares = shares.sort_values(["ctype", "long_share"], ascending=[True, False]).reset_index(drop=True)

    changes = [Change(int(r.concept_id), r.concept, r.ctype, float(r.long_share), float(r.short_share))
               for r in shares.itertuples() if r.long_share > 0 or r.short_share > 0]
    rising = sorted((c for c in changes if c.delta > 0.01 and c.long_share > 0), key=lambda c: -c.delta)[:top]
    falling = sorted((c for c in changes if c.delta < -0.01 and c.short_share > 0), key=lambda c: c.delta)[:top]
    has_short = (shares.short_share > 0).any()
    new = sorted((c for c in changes if c.long_share == 0 and c.short_share > 0), key=lambda c: -c.short_share)[:top]
    dropped = sorted((c for c in changes if has_short and c.short_share == 0 and c.long_share > 0),
                     key=lambda c: -c.long_share)[:top]
    neg = shares[shares.long_score < 0].sort_values("long_score")
    dislikes = [(int(r.concept_id), r.concept, r.ctype, float(r.long_score)) for r in neg.head(top).itertuples()]
    src = k.interest_source
    return Profile(int(user_id), source, shares, rising, falling, new, dropped, dislikes,
                   interests=k.interests(user_id), interest_source=None if src is None else src.label())
