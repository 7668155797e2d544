"""One configuration object for every command.

The configuration is a TOML file with one table per stage (``[ingest]``, ``[tag]``,
``[embed]``, ``[schema]``, ``[graph]``, ``[gnn]``, ``[eval]`` ...). Each stage declares its own
settings as a dataclass with defaults and reads them with :meth:`Config.section`; unknown keys
are an error (a typo must not be silently ignored). CLI flags override file values through
:meth:`Config.override`.

Example ``posterkg.toml``::

    db = "ml1m.duckdb"

    [tag]
    backend = "pixels"
    batch_size = 16
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from posterkg.errors import ConfigError

T = TypeVar("T")

DEFAULT_DB = "posterkg.duckdb"


def read_toml(path: str | Path, *, what: str = "file", error: type[Exception] = ConfigError,
              missing: type[Exception] | None = None, hint: str = "") -> dict[str, Any]:
    """Parse a TOML file, raising ``missing`` (default ``error``) when it does not exist and
    ``error`` when it is not valid TOML; ``what`` names the file in the message."""
    p = Path(path)
    if not p.is_file():
        raise (missing or error)(f"{what} not found: {p}{hint}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{p}: invalid TOML: {exc}") from exc


@dataclasses.dataclass
class Config:
    """Parsed configuration: top-level keys plus one dict per stage section."""

    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path | None) -> "Config":
        if path is None:
            return cls()
        return cls(data=read_toml(path, what="config file"), path=Path(path))

    @property
    def db(self) -> Path:
        """Database path; relative paths are relative to the working directory, like every path."""
        return Path(self.data.get("db", DEFAULT_DB))

    def section(self, name: str, cls: type[T]) -> T:
        """Build the dataclass ``cls`` from the ``[name]`` table, defaults for missing keys."""
        raw = self.data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{name}] must be a table")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in [{name}]: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"[{name}]: {exc}") from exc

    def override(self, name: str | None = None, **values: Any) -> None:
        """Set values given on the command line (``None`` means 'flag not given')."""
        target = self.data if name is None else self.data.setdefault(name, {})
        for k, v in values.items():
            if v is not None:
                target[k] = v

    def fingerprint(self, *sections: str) -> str:
        """Stable hash of some sections, used to skip stages whose inputs did not change."""
        import hashlib

        blob = json.dumps({s: self.data.get(s, {}) for s in sections}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
