"""One configuration object for every command.

The configuration is a TOML file with one table per stage (``[ingest]``, ``[tag]``,
``[embed]``, ``[schema]``, ``[graph]``, ``[gnn]`` ...; the full list is :data:`SECTIONS`, and
any other section or top-level key is an error naming the nearest valid one). Each stage declares its own
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
import difflib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from posterkg.errors import ConfigError

T = TypeVar("T")

DEFAULT_DB = "posterkg.duckdb"

# Every table a configuration file may hold, and every top-level key. A stage that adds a section
# adds its name here (one place), so a typo such as ``[tagg]`` is an error naming ``[tag]``.
SECTIONS = {"ingest", "fetch", "split", "tag", "embed", "schema", "graph", "gnn", "gnn_model",
            "explain", "interests", "features", "models", "train",
            "semantic_ids"}   # [semantic_ids.<version>] tables: posterkg/semantic/ids.py
TOP_LEVEL = {"db"}


def nearest(name: str, known) -> str:
    """`` (did you mean X?)`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(where: str, key: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against the type ``annotation`` of field ``key``; ints are accepted (and
    converted) where a float is wanted. Unknown or complex annotations are not checked."""
    ok, converted = _conforms(value, annotation)
    if not ok:
        raise ConfigError(f"{where} {key} = {value!r}: expected {_type_name(annotation)}, "
                          f"got {type(value).__name__}")
    return converted


def _conforms(value: Any, ann: Any) -> tuple[bool, Any]:
    if ann is Any or ann is None or isinstance(ann, (str, typing.TypeVar)):
        return True, value
    origin = typing.get_origin(ann)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType)):
        for arg in typing.get_args(ann):
            if arg is type(None):
                if value is None:
                    return True, value
                continue
            ok, conv = _conforms(value, arg)
            if ok:
                return True, conv
        return False, value
    base = origin or ann
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if base is str:
        return isinstance(value, str), value
    if base in (list, tuple, set, frozenset):
        if isinstance(value, (list, tuple)):
            args = typing.get_args(ann)
            if args and base is not tuple and not all(_conforms(v, args[0])[0] for v in value):
                return False, value
            return True, base(value) if base is not list else list(value)
        return False, value
    if base is dict:
        return isinstance(value, dict), value
    if isinstance(base, type):
        return isinstance(value, base), value
    return True, value


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(ann, types.UnionType)):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    base = origin or ann
    if base is type(None):
        return "nothing"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a table"}
    return names.get(base, getattr(base, "__name__", str(base)))


def check_fields(cls: type, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Keys of ``raw`` checked against the dataclass ``cls``: unknown keys (with the nearest
    known one) and values of the wrong type are a :class:`ConfigError` naming the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) "
            + ", ".join(f"{k}{nearest(k, fields)}" for k in unknown)
            + f"; known: {', '.join(sorted(fields))}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked
        hints = {}
    return {k: check_value(where, k, v, hints.get(k, Any)) for k, v in raw.items()}


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
        config = cls(data=read_toml(path, what="config file"), path=Path(path))
        config.validate()
        return config

    def validate(self) -> None:
        """Unknown sections and top-level keys are an error naming the nearest valid one."""
        where = f"{self.path}: " if self.path else ""
        for key, value in self.data.items():
            if key in SECTIONS and not isinstance(value, dict):
                raise ConfigError(f"{where}{key} = {value!r}: {key} is a section, write it as a "
                                  f"table [{key}] with its keys below")
            if isinstance(value, dict):
                if key not in SECTIONS:
                    raise ConfigError(f"{where}unknown section [{key}]{nearest(key, SECTIONS)}; "
                                      f"known: {', '.join(sorted(SECTIONS))}")
            elif key not in TOP_LEVEL:
                hint = nearest(key, TOP_LEVEL | SECTIONS)
                raise ConfigError(f"{where}unknown top-level key {key!r}{hint}; known: "
                                  f"{', '.join(sorted(TOP_LEVEL))} and the sections "
                                  f"{', '.join(sorted(SECTIONS))}")
        self.db  # noqa: B018 - type-checks db

    @property
    def db(self) -> Path:
        """Database path; relative paths are relative to the working directory, like every path."""
        value = self.data.get("db", DEFAULT_DB)
        if not isinstance(value, (str, Path)) or not str(value):
            where = f"{self.path}: " if self.path else ""
            raise ConfigError(f"{where}top-level key db = {value!r}: expected a file path string")
        return Path(value)

    def section(self, name: str, cls: type[T]) -> T:
        """Build the dataclass ``cls`` from the ``[name]`` table, defaults for missing keys.

        The one place config values are validated: unknown keys (with the nearest known one) and
        values whose type does not match the field's annotation are a :class:`ConfigError`."""
        raw = self.data.get(name, {})
        where = f"{self.path}: [{name}]" if self.path else f"[{name}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table, got {raw!r}")
        values = check_fields(cls, raw, where)
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
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
