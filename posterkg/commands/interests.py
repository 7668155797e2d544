"""``posterkg interests``: a user's long- and short-term interests on the concept vocabulary."""

from __future__ import annotations

import click

from posterkg.clikit import Env, common_options, pass_env, print_table
from posterkg.errors import ConfigError


def _parse_users(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise ConfigError(f"--users takes comma-separated user ids, got {text!r}") from exc


@click.group()
def interests() -> None:
    """Extract users' interests (Graph RAG over their subgraph) into table user_interests."""


@interests.command()
@common_options
@click.option("--backend", type=click.Choice(["stats", "hf", "vllm", "openai"]),
              help="stats (from user_prefs, no weights) | hf | vllm | openai  [config: interests.backend, stats]")
@click.option("--model", help="Model id or local path [the backend's default, Qwen/Qwen2-VL-2B-Instruct].")
@click.option("--users", help="Only these user ids, comma-separated: --users 1,2,3")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N users by id.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Users per backend call and per transaction [8].")
@click.option("--retry-failed", is_flag=True, default=None, help="Re-try users that failed in earlier runs.")
@pass_env
def extract(env: Env, backend, model, users, limit, batch_size, retry_failed) -> None:
    """Read each user's subgraph and write their interests (table user_interests).

    For every user: the train movies in time order with their poster concepts, the short-term
    window, the disliked movies and the current interest nodes are written as text within a
    token budget; the model answers under a JSON schema whose concepts are the frozen vocabulary
    and whose evidence ids are the user's own movies; every answer is validated before it is
    stored. Resumable and incremental: a rerun skips users already done whose ratings did not
    change; stop it any time (even kill -9) and run it again.

    \b
    Examples:
      posterkg interests extract                          # stats: from user_prefs, no weights
      posterkg interests extract --backend vllm           # Qwen2-VL-2B (text-only prompt), GPU
      posterkg interests extract --backend hf --users 1,2,3 --model /models/qwen2-vl-2b
    Use them in the graph: [graph] user_interests = "stats" (or "vllm", or a run id).
    """
    from posterkg.interests import InterestsConfig
    from posterkg.interests.runner import run_interests, summary_rows

    env.config.override("interests", backend=backend, model=model, limit=limit,
                        batch_size=batch_size, retry_failed=retry_failed)
    cfg = env.config.section("interests", InterestsConfig)
    tag_options = env.config.data.get("tag", {})
    with env.store() as store:
        summary = run_interests(store, cfg, users=_parse_users(users), tag_options=tag_options)
    print_table(summary_rows(summary), ["interests", "value"])


@interests.command()
@common_options
@click.option("--user", "user_id", type=int, required=True, help="User id.")
@click.option("--backend", default=None, help="Only this backend's interests (or a run id).")
@pass_env
def show(env: Env, user_id: int, backend: str | None) -> None:
    """Print a user's stored interests with their evidence movies."""
    from posterkg.errors import InputError

    with env.store(read_only=True) as store:
        if not store.table_exists("user_interests"):
            raise InputError("no user_interests table; run `posterkg interests extract` first")
        where, params = "i.user_id = ?", [user_id]
        if backend:
            where += " AND (i.backend = ? OR i.run_id = ?)"
            params += [backend, backend]
        rows = store.execute(f"""
            SELECT i.backend, i.horizon, i.polarity, c.type, c.name, i.confidence,
                   (SELECT string_agg(coalesce(m.title, e::VARCHAR), '; ' ORDER BY k)
                    FROM (SELECT unnest(i.evidence) AS e, generate_subscripts(i.evidence, 1) AS k) x
                    LEFT JOIN movies m ON m.movie_id = x.e) AS evidence
            FROM user_interests i LEFT JOIN concepts c USING (concept_id)
            WHERE {where}
            ORDER BY i.backend, i.horizon, i.polarity, i.confidence DESC, c.name""", params).fetchall()
    if not rows:
        raise InputError(f"no interests stored for user {user_id}")
    print_table(rows, ["backend", "horizon", "polarity", "type", "concept", "conf", "evidence"])
