"""``posterkg schema discover|freeze|project|grow|show``: the concept vocabulary."""

from __future__ import annotations

from pathlib import Path

import click

from posterkg.clikit import Env, common_options, pass_env, print_table


def _setup(env: Env, store, *, from_vocab: bool = True, prefer_frozen: bool = False, **overrides):
    """(schema config, embedding cache). The encoder is the model the vocabulary was made with
    (its file's ``[meta] model``, else the frozen version's) unless ``--model`` is given or
    ``from_vocab`` is off (discover); its weights are located before any work starts."""
    from posterkg.embed.cache import EmbeddingCache
    from posterkg.embed.encoder import load_encoder
    from posterkg.schema.stage import configs, embed_config, vocab_path

    env.config.override("schema", **{k: v for k, v in overrides.items() if k != "model"})
    env.config.override("embed", model=overrides.get("model"))
    cfg, _ = configs(env.config)
    path = vocab_path(env.config, cfg, store.path)
    ecfg = embed_config(store, env.config, path, explicit=overrides.get("model") is not None or not from_vocab,
                        prefer_frozen=prefer_frozen)
    encoder = load_encoder(ecfg)
    encoder.locate()       # missing weights: fail now with the download hint, before any work
    return cfg, EmbeddingCache(store, encoder)


model_option = click.option("--model", help="Embedding model: HF id, local path, or minilm | bge-small | bge-m3 "
                            "[default: [embed] model].")


@click.group()
def schema() -> None:
    """Discover, freeze, project and grow the concept vocabulary.

    \b
    The usual sequence after `posterkg tag`:
      posterkg schema discover --sample 0.05 --seed 0   # clusters -> ml1m.vocab.toml
      $EDITOR ml1m.vocab.toml                           # rename / merge / split by hand
      posterkg schema freeze                            # -> vocabulary version 1
      posterkg schema project                           # points -> concepts
      posterkg schema show --type Lighting
    Later, after tagging more movies: `posterkg schema project` (only the new movies) and
    `posterkg schema grow` (new concepts from unassigned values; old ids never change).
    """


@schema.command()
@common_options
@click.option("--sample", type=float, help="Fraction of tagged movies to discover from [default: 0.05].")
@click.option("--seed", type=int, help="Sampling seed [default: 0].")
@click.option("--method", type=click.Choice(["hdbscan", "agglomerative"]), help="Clustering [default: hdbscan].")
@click.option("--min-concepts", type=int, help="Target range per type: lower end [default: 2].")
@click.option("--max-concepts", type=int, help="Target range per type: upper end [default: 60].")
@click.option("--out", type=click.Path(dir_okay=False), help="Vocabulary TOML to write [default: [schema] vocab, "
              "else <db>.vocab.toml].")
@click.option("--force", is_flag=True, help="Overwrite an existing vocabulary file.")
@model_option
@pass_env
def discover(env: Env, sample, seed, method, min_concepts, max_concepts, out, force, model) -> None:
    """Cluster the open-mode values of a seeded movie sample into concepts per type.

    Prints per type: unique values, concepts, concept sizes, noise share and silhouette, and
    writes a human-editable TOML draft. Nothing is frozen until `posterkg schema freeze`.

    \b
    Example:
      posterkg schema discover --sample 0.1 --seed 1 --method agglomerative --out draft.toml
    """
    from posterkg.errors import PosterkgError
    from posterkg.schema import vocab as V
    from posterkg.schema.discover import REPORT_HEADERS, discover as run_discover
    from posterkg.schema.stage import vocab_path

    with env.store() as store:
        cfg, cache = _setup(env, store, from_vocab=False, sample=sample, seed=seed, method=method,
                            min_concepts=min_concepts, max_concepts=max_concepts, vocab=out, model=model)
        path = vocab_path(env.config, cfg, store.path) if out is None else Path(out)
        if path.exists() and not force:
            raise PosterkgError(f"{path} exists; pass --force to overwrite it or --out to write elsewhere")
        concepts, reports, meta = run_discover(store, cfg, cache)
    print_table([r.row() for r in reports], REPORT_HEADERS,
                title=f"{meta['movies']} movies sampled ({meta['backend']} / {meta['tag_model']})")
    lines = [" ".join(map(str, r.row())) for r in reports]
    V.write_toml(path, concepts, meta, report=["discovery report: " + " ".join(REPORT_HEADERS)] + lines)
    click.echo(f"wrote {path}: {len(concepts)} concepts. Edit it, then `posterkg schema freeze`.")


@schema.command()
@common_options
@click.option("--vocab", "vocab_file", type=click.Path(dir_okay=False, exists=True),
              help="Vocabulary TOML [default: [schema] vocab, else <db>.vocab.toml].")
@click.option("--note", default="", help="A note stored with the version.")
@click.option("--force", is_flag=True, help="Create a version even if nothing changed.")
@model_option
@pass_env
def freeze(env: Env, vocab_file, note, force, model) -> None:
    """Store the vocabulary TOML as a new numbered version.

    Concept ids never change: a concept keeps its id by `id`, by name, or by sharing most of its
    members with an earlier concept; removed concepts are retired, not renumbered. Freezing an
    unchanged file does nothing.

    \b
    Example:
      posterkg schema freeze --vocab ml1m.vocab.toml --note "merged two warm palettes"
    """
    from posterkg.schema import vocab as V
    from posterkg.schema.stage import vocab_path

    with env.store() as store:
        cfg, cache = _setup(env, store, vocab=vocab_file, model=model)
        path = vocab_path(env.config, cfg, store.path)
        _, concepts = V.read_toml(path)
        version, created = V.freeze(store, concepts, cache, source=str(path), note=note, force=force)
        n = store.scalar("SELECT n_concepts FROM vocab_versions WHERE version = ?", [version])
    click.echo(f"vocabulary v{version}: {n} concepts" + ("" if created else " (unchanged: nothing written)"))


@schema.command()
@common_options
@click.option("--version", "version", type=int, help="Vocabulary version [default: latest].")
@click.option("--threshold", type=float, help="Min cosine similarity to a concept [default: 0.4].")
@click.option("--full", is_flag=True, help="Clear and re-project every point (e.g. after a hand edit).")
@click.option("--no-retry-pool", is_flag=True, help="Do not retry unassigned points against a newer version.")
@model_option
@pass_env
def project(env: Env, version, threshold, full, no_retry_pool, model) -> None:
    """Map raw points to their nearest concept of the same type (incremental).

    Only movies with no projected points yet are touched; unassigned points stay in the
    candidate pool. Writes point_concepts and movie_concepts.

    \b
    Examples:
      posterkg schema project
      posterkg schema project --full --threshold 0.5
    """
    from posterkg.schema.project import project as run_project

    with env.store() as store:
        cfg, cache = _setup(env, store, prefer_frozen=True, threshold=threshold, model=model)
        summary = run_project(store, cfg, cache, version=version, full=full, retry_pool=not no_retry_pool)
    print_table(list(summary.items()), ["projection", "value"])


@schema.command()
@common_options
@click.option("--dry-run", is_flag=True, help="Only show the proposals.")
@click.option("--min-pool", type=int, help="Unique pooled values a type needs [default: 20].")
@click.option("--no-project", is_flag=True, help="Do not re-project the pool afterwards.")
@model_option
@pass_env
def grow(env: Env, dry_run, min_pool, no_project, model) -> None:
    """Propose new concepts from the candidate pool and append them as a new version.

    Old concepts keep their ids; the pooled points are then re-projected (assigned points never
    move). The vocabulary TOML is rewritten from the new version so it stays the file to edit.

    \b
    Example:
      posterkg schema grow --dry-run && posterkg schema grow
    """
    from posterkg.schema import vocab as V
    from posterkg.schema.grow import grow as run_grow
    from posterkg.schema.project import project as run_project
    from posterkg.schema.stage import vocab_path

    with env.store() as store:
        cfg, cache = _setup(env, store, prefer_frozen=True, grow_min_pool=min_pool, model=model)
        out = run_grow(store, cfg, cache, dry_run=dry_run)
        rows = [(p["type"], p["name"], len(p["members"]), ", ".join(p["members"][:4])) for p in out["proposals"]]
        print_table(rows, ["type", "proposed concept", "members", "examples"],
                    title=f"{len(rows)} proposal(s) from the candidate pool")
        if out["created"]:
            path = vocab_path(env.config, cfg, store.path)
            V.write_toml(path, V.export_concepts(store), {"model": cache.model, "version": out["version"]})
            click.echo(f"vocabulary v{out['version']} (from v{out['parent']}); rewrote {path}")
            if not no_project:
                print_table(list(run_project(store, cfg, cache).items()), ["projection", "value"])
        elif not dry_run:
            click.echo("nothing to grow: no type has a large enough pool of clusterable values")


@schema.command()
@common_options
@click.option("--type", "type_", help="Only this knowledge type.")
@click.option("--version", "version", type=int, help="Vocabulary version [default: latest].")
@click.option("--toml", "toml_out", type=click.Path(dir_okay=False),
              help="Also export the version (with ids) as an editable TOML file.")
@click.option("--members", "n_members", type=int, default=3, show_default=True, help="Members shown per concept.")
@pass_env
def show(env: Env, type_, version, toml_out, n_members) -> None:
    """The vocabulary with counts: movies and points per concept, and the candidate pool.

    \b
    Example:
      posterkg schema show --type Color_Palette
    """
    from posterkg.schema import vocab as V

    with env.store(read_only=True) as store:
        frame = V.version_concepts(store, version)
        v = V._resolve_version(store, version)
        counts = {}
        if store.table_exists("point_concepts"):
            counts = {int(r[0]): (int(r[1]), int(r[2])) for r in store.execute(
                "SELECT concept_id, count(DISTINCT movie_id), count(*) FROM point_concepts "
                "WHERE concept_id IS NOT NULL GROUP BY 1").fetchall()}
        pool = store.execute("SELECT type, count(*), count(DISTINCT value) FROM point_concepts "
                             "WHERE concept_id IS NULL GROUP BY 1 ORDER BY 1").fetchall() \
            if store.table_exists("point_concepts") else []
        if toml_out:
            V.write_toml(toml_out, V.export_concepts(store, v), {"version": v, "model": V.version_model(store, v)})
    if type_:
        frame = frame[frame["type"] == type_]
    rows = [(int(i), t, n, counts.get(int(i), (0, 0))[0], counts.get(int(i), (0, 0))[1], len(ms),
             ", ".join(ms[:n_members])) for i, t, n, ms in
            zip(frame["concept_id"], frame["type"], frame["name"], frame["members"])]
    rows.sort(key=lambda r: (r[1], -r[3], r[0]))
    print_table(rows, ["id", "type", "concept", "movies", "points", "members", "examples"],
                title=f"vocabulary v{v}: {len(rows)} concepts" + (f" of type {type_}" if type_ else ""))
    pool = [p for p in pool if not type_ or p[0] == type_]
    if pool:
        print_table(pool, ["type", "pooled points", "unique values"], title="candidate pool (unassigned)")
    if toml_out:
        click.echo(f"wrote {toml_out}")
