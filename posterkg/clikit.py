"""Shared CLI plumbing: the ``--db``/``--config`` options every command accepts, the context
object that carries the configuration, and clean error reporting.

Options may be given before the sub-command (``posterkg --db x.duckdb info``) or after it
(``posterkg info --db x.duckdb``); the later one wins.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import click

from posterkg.config import Config
from posterkg.store import Store, open_store


@dataclasses.dataclass
class Env:
    """What every command receives (``@pass_env``)."""

    config_path: str | None = None
    db_path: str | None = None
    _config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = Config.load(self.config_path)
        return self._config

    @property
    def db(self) -> Path:
        return Path(self.db_path) if self.db_path else self.config.db

    def store(self, *, read_only: bool = False) -> Store:
        return open_store(self.db, read_only=read_only)


def _set_db(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    if value is not None:
        ctx.ensure_object(Env).db_path = value
    return value


def _set_config(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    if value is not None:
        env = ctx.ensure_object(Env)
        env.config_path = value
        env._config = None
    return value


db_option = click.option(
    "--db", type=click.Path(dir_okay=False), expose_value=False, callback=_set_db,
    is_eager=True, help="DuckDB database file [default: from config, else ./posterkg.duckdb].",
)
config_option = click.option(
    "--config", type=click.Path(dir_okay=False), expose_value=False, callback=_set_config,
    is_eager=True, help="TOML configuration file; flags override its values.",
)


def common_options(f: Callable) -> Callable:
    """Add ``--db`` and ``--config`` to a command."""
    return config_option(db_option(f))


def pass_env(f: Callable) -> Callable:
    """Pass the :class:`Env` as first argument (creating it if the group did not)."""

    @click.pass_context
    @functools.wraps(f)
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        return ctx.invoke(f, ctx.ensure_object(Env), *args, **kwargs)

    return wrapper


def print_table(rows: list[tuple | list], headers: list[str] | None = None, title: str | None = None) -> None:
    """Print rows as an aligned plain-text table."""
    srows = [[_fmt(c) for c in r] for r in rows]
    cols = list(zip(*([headers] if headers else []) + srows)) if (srows or headers) else []
    widths = [max(len(c) for c in col) for col in cols]
    if title:
        click.echo(title)
    if headers:
        click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        click.echo("  ".join("-" * w for w in widths))
    for r in srows:
        click.echo("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def _numeric(s: str) -> bool:
    return bool(s) and s.replace(",", "").replace(".", "").replace("-", "").replace("%", "").isdigit()
