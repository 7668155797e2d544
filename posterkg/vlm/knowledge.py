"""The knowledge schema: what a tagger is asked for, and how its answer is checked.

A schema is a TOML file (the default ships as ``default_schema.toml`` beside this module; copy it,
edit it, pass it with ``posterkg tag --schema FILE``) with typed knowledge types (name,
description, examples) and three limits: ``max_points`` per poster, ``max_value_length``
characters per value, and the ``confidence_levels`` a confidence may take.

From it this module builds, for one run:

* the **prompt** (:meth:`KnowledgeSchema.prompt`),
* the **JSON schema** of the answer (:meth:`KnowledgeSchema.json_schema`), sent to the
  constrained decoder and used again, unchanged, to validate what comes back::

      {"points": [{"type": <enum of type names>, "value": <string>, "confidence": <enum>}, ...]}

  with ``minItems`` 1, ``maxItems`` ``max_points``, ``additionalProperties: false`` and a fixed
  property order (type, value, confidence; xgrammar follows the declared order).

  - *open* mode (``vocab=None``): a value is printable ASCII without ``"`` and ``\\``, 1 to
    ``max_value_length`` characters, written as a regex ``pattern`` with the bound inside
    (``^[ !#-\\[\\]-~]{1,40}$``). Not ``maxLength``: with xgrammar a ``maxLength`` string admits
    raw control characters and invalid UTF-8, and vLLM rejects ``pattern`` together with
    ``maxLength`` (see ``../shared/notes/platform.md``).
  - *closed* mode (``vocab={type: [values...]}``, the frozen vocabulary of the ``schema``
    stage): each item is ``anyOf`` per-type objects whose ``type`` is a ``const`` and whose
    ``value`` is an ``enum`` of that type's vocabulary. Types without vocabulary are left out.
* a **max_tokens** budget that always fits a complete answer (:meth:`KnowledgeSchema.max_tokens`).

Confidence is an ``enum`` of a few numbers (default 0, 0.125, ..., 1: nine levels). A JSON
``number`` with ``minimum``/``maximum`` would leave the digit count unbounded (xgrammar's number
rule is ``[0-9]+ ("." [0-9]+)?``), so no finite token budget would exist. The levels are dyadic
fractions because xgrammar prints enum numbers with ``%.17g``: 0.05 becomes
``0.050000000000000003`` (20 bytes) while 0.125 stays ``0.125``. Nine levels are as fine a scale
as a model's self-rated confidence deserves.

Why bytes bound tokens
----------------------
The grammar admits a finite language: a fixed key order, an enum of types, a bounded value, an
enum of confidences, at most ``max_points`` items and no free whitespace (vLLM's
``disable_any_whitespace`` / xgrammar's ``any_whitespace=False``). So there is a longest valid
answer, and :meth:`KnowledgeSchema.max_tokens` is its UTF-8 byte length plus one for the
end-of-sequence token. Every token of a byte-level BPE tokenizer (Qwen2/Qwen2.5-VL, LLaVA
OneVision) decodes to at least one byte, and the grammar masks out special tokens that decode to
nothing, so an answer of B bytes takes at most B tokens. (For SentencePiece tokenizers with byte
fallback, such as LLaVA 1.5's, each piece is also at least one byte.)

Careful with "no whitespace": xgrammar with ``any_whitespace=False`` and no explicit separators
uses ``", "`` and ``": "`` (one space after commas and colons), which is what vLLM produces. The
bound is computed for these :data:`SEPARATORS` by default; it also bounds compact output. Values
are counted in the longer of their two JSON spellings (raw UTF-8, which xgrammar emits, or
``\\uXXXX`` escapes), so Chinese vocabulary entries cannot overflow the budget either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from posterkg.config import read_toml
from posterkg.errors import ConfigError, PosterkgError
from posterkg.vlm.base import TagSpec

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("default_schema.toml")

#: Separators of xgrammar's JSON grammar with ``any_whitespace=False`` and no ``separators``
#: argument (what vLLM's ``disable_any_whitespace`` produces). Backends that compile the grammar
#: themselves (hf) should pass these explicitly so the token budget stays exact.
SEPARATORS: tuple[str, str] = (", ", ": ")
COMPACT_SEPARATORS: tuple[str, str] = (",", ":")

#: Printable ASCII without ``"`` (0x22) and ``\\`` (0x5C): no escapes, one byte per character.
VALUE_CHARSET = r"[ !#-\[\]-~]"
_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Failure classes of a model answer (also used as ``tag_status.reason``).
REASONS = ("truncated", "invalid_json", "schema_violation")


class InvalidOutput(PosterkgError):
    """A model answer that cannot be stored; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class KnowledgeType:
    name: str
    description: str
    examples: tuple[str, ...] = ()


def _json_literal_bytes(value: Any) -> int:
    """Bytes of ``value`` as a JSON literal, the longer of the raw-UTF-8 and ``\\u``-escaped forms."""
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8")
    escaped = json.dumps(value, ensure_ascii=True).encode("ascii")
    return max(len(raw), len(escaped))


def _normalise_level(x: Any) -> int | float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"confidence level {x!r} is not a number")
    if not 0 <= x <= 1:
        raise ConfigError(f"confidence level {x} is outside 0..1")
    if float(x).is_integer():
        return int(x)
    # dyadic with a small denominator: printed exactly and briefly by every JSON engine
    if not any(float(x * 2**k).is_integer() for k in range(11)):
        raise ConfigError(
            f"confidence level {x} is not a multiple of 1/1024; use dyadic fractions such as 0.125 "
            "(xgrammar prints other floats with 17 digits, e.g. 0.05 -> 0.050000000000000003)"
        )
    return float(x)


def canonical_vocab(vocab: Mapping[str, Any]) -> dict[str, list[str]]:
    """Sorted, de-duplicated, non-empty lists of string values per type."""
    out: dict[str, list[str]] = {}
    for t, values in vocab.items():
        vals = sorted({str(v) for v in values if str(v).strip()})
        if vals:
            out[str(t)] = vals
    return out


@dataclasses.dataclass
class KnowledgeSchema:
    """A loaded knowledge schema. Build with :func:`load_schema`."""

    types: list[KnowledgeType]
    max_points: int = 12
    max_value_length: int = 40
    confidence_levels: tuple[int | float, ...] = (0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1)
    instructions: str = ""
    version: int = 1
    source: Path | None = None

    # -- identity ----------------------------------------------------------------------------
    def canonical(self) -> dict[str, Any]:
        """The content the hash covers (comments and TOML layout don't count)."""
        return {
            "version": self.version,
            "max_points": self.max_points,
            "max_value_length": self.max_value_length,
            "confidence_levels": list(self.confidence_levels),
            "instructions": self.instructions.strip(),
            "types": [
                {"name": t.name, "description": t.description, "examples": list(t.examples)}
                for t in self.types
            ],
        }

    @cached_property
    def hash(self) -> str:
        """First 16 hex digits of sha256 over the canonical JSON of :meth:`canonical`."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def spec_hash(self, vocab: Mapping[str, Any] | None = None) -> str:
        """The resume-key hash of a run: the schema hash in open mode; in closed mode a hash of
        the schema hash plus the canonical vocabulary (another vocabulary = another question)."""
        if vocab is None:
            return self.hash
        blob = json.dumps(canonical_vocab(vocab), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(f"{self.hash}|closed|{blob}".encode("utf-8")).hexdigest()[:16]

    @property
    def type_names(self) -> list[str]:
        return [t.name for t in self.types]

    # -- the answer's JSON schema ------------------------------------------------------------
    @property
    def value_pattern(self) -> str:
        return f"^{VALUE_CHARSET}{{1,{self.max_value_length}}}$"

    def _closed_vocab(self, vocab: Mapping[str, Any]) -> dict[str, list[str]]:
        cv = canonical_vocab(vocab)
        unknown = sorted(set(cv) - set(self.type_names))
        if unknown:
            raise ConfigError(f"vocabulary has types the schema does not know: {', '.join(unknown)}")
        if not cv:
            raise ConfigError("closed mode needs a vocabulary with at least one value")
        return {t: cv[t] for t in self.type_names if t in cv}   # schema order

    def _item(self, type_schema: dict[str, Any], value_schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "type": type_schema,
                "value": value_schema,
                "confidence": {"enum": list(self.confidence_levels)},
            },
            "required": ["type", "value", "confidence"],
            "additionalProperties": False,
        }

    def json_schema(self, vocab: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The answer's JSON schema; open mode when ``vocab`` is None, closed otherwise."""
        if vocab is None:
            items = self._item({"enum": self.type_names},
                               {"type": "string", "pattern": self.value_pattern})
        else:
            cv = self._closed_vocab(vocab)
            items = {"anyOf": [self._item({"const": t}, {"enum": vals}) for t, vals in cv.items()]}
        return {
            "type": "object",
            "properties": {
                "points": {"type": "array", "items": items, "minItems": 1, "maxItems": self.max_points},
            },
            "required": ["points"],
            "additionalProperties": False,
        }

    # -- token budget ------------------------------------------------------------------------
    def max_answer_bytes(self, vocab: Mapping[str, Any] | None = None,
                         separators: tuple[str, str] = SEPARATORS) -> int:
        """UTF-8 bytes of the longest answer the grammar admits (see the module docstring)."""
        comma, colon = separators
        conf = max(_json_literal_bytes(c) for c in self.confidence_levels)

        def item_bytes(type_lit: int, value_lit: int) -> int:
            # {"type": T, "value": V, "confidence": C}
            return (len('{"type"') + len(colon) + type_lit
                    + len(comma) + len('"value"') + len(colon) + value_lit
                    + len(comma) + len('"confidence"') + len(colon) + conf + len("}"))

        if vocab is None:
            longest_type = max(_json_literal_bytes(t) for t in self.type_names)
            item = item_bytes(longest_type, self.max_value_length + 2)
        else:
            cv = self._closed_vocab(vocab)
            item = max(item_bytes(_json_literal_bytes(t), max(_json_literal_bytes(v) for v in vals))
                       for t, vals in cv.items())
        n = self.max_points
        # {"points": [ item, item ... ]}
        return (len('{"points"') + len(colon) + len("[") + n * item + (n - 1) * len(comma)
                + len("]}"))

    def max_tokens(self, vocab: Mapping[str, Any] | None = None,
                   separators: tuple[str, str] = SEPARATORS) -> int:
        """Token budget that always fits a complete answer: longest answer in bytes + 1 (EOS)."""
        return self.max_answer_bytes(vocab, separators) + 1

    # -- prompt ------------------------------------------------------------------------------
    def prompt(self, vocab: Mapping[str, Any] | None = None, *, vocab_in_prompt: int = 40) -> str:
        """The user-turn text sent with each poster.

        In closed mode each type lists up to ``vocab_in_prompt`` allowed values (the grammar
        enforces the full list; the prompt only has to orient the model).
        """
        lines = [self.instructions.strip(), "", "Knowledge types:"]
        cv = self._closed_vocab(vocab) if vocab is not None else None
        for t in self.types:
            if cv is not None and t.name not in cv:
                continue
            lines.append(f"- {t.name}: {t.description}")
            if cv is None:
                if t.examples:
                    lines.append("  examples: " + "; ".join(t.examples))
            else:
                vals = cv[t.name]
                more = f" (and {len(vals) - vocab_in_prompt} more)" if len(vals) > vocab_in_prompt else ""
                lines.append("  allowed values: " + "; ".join(vals[:vocab_in_prompt]) + more)
        lines += [
            "",
            f"Answer with JSON only: {{\"points\": [{{\"type\": ..., \"value\": ..., "
            f"\"confidence\": ...}}, ...]}} with 1 to {self.max_points} points.",
            "confidence is one of " + ", ".join(json.dumps(c) for c in self.confidence_levels) + ".",
        ]
        if cv is None:
            lines.append(f"Each value is at most {self.max_value_length} characters.")
        else:
            lines.append("Each value must be one of the allowed values of its type.")
        return "\n".join(lines)

    # -- spec --------------------------------------------------------------------------------
    def build_spec(self, vocab: Mapping[str, Any] | None = None) -> TagSpec:
        cv = self._closed_vocab(vocab) if vocab is not None else None
        return TagSpec(
            prompt=self.prompt(cv),
            json_schema=self.json_schema(cv),
            max_tokens=self.max_tokens(cv),
            schema_hash=self.spec_hash(cv),
            mode="open" if cv is None else "closed",
            vocab=cv,
            separators=SEPARATORS,
        )

    # -- checking answers --------------------------------------------------------------------
    def parse(self, raw: str | None, finish_reason: str | None = None) -> Any:
        """Parse a model's raw text; see :func:`parse_answer`."""
        return parse_answer(raw, finish_reason)

    def validate(self, obj: Any, vocab: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Check ``obj`` against the very schema sent (:meth:`json_schema` with ``vocab``) and
        return its points; see :func:`check_answer`."""
        cv = self._closed_vocab(vocab) if vocab is not None else None
        return check_answer(obj, self.json_schema(cv), closed=cv is not None)

    def validate_raw(self, raw: str | None, finish_reason: str | None = None,
                     vocab: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.validate(self.parse(raw, finish_reason), vocab)

    def quantize(self, confidence: float) -> int | float:
        """The confidence level nearest to ``confidence`` (ties go to the lower level)."""
        return min(self.confidence_levels, key=lambda c: (abs(c - confidence), c))


def parse_answer(raw: str | None, finish_reason: str | None = None) -> Any:
    """Parse a model's raw text; classify failures.

    ``truncated`` when the backend says it stopped for length or the JSON ends early
    (unterminated string, error at the very end of the text); ``invalid_json`` otherwise.
    A Markdown code fence around the JSON (unconstrained servers emit one) is tolerated.
    """
    text = (raw or "").strip()
    if text.startswith("```"):
        text = re.sub(r"^```[A-Za-z]*\s*", "", text)
        text = re.sub(r"\s*```$", "", text)
    if not text:
        raise InvalidOutput("truncated" if finish_reason == "length" else "invalid_json", "empty output")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        unterminated = exc.pos >= len(text) or exc.msg.startswith("Unterminated string")
        if finish_reason == "length" or unterminated:
            raise InvalidOutput("truncated", f"JSON ends early ({exc.msg}; {len(text)} chars)") from None
        raise InvalidOutput("invalid_json", f"{exc.msg} at char {exc.pos}") from None


_VALIDATORS: dict[str, Any] = {}


def _validator(json_schema: dict[str, Any]):
    import jsonschema

    key = hashlib.sha256(json.dumps(json_schema, sort_keys=True).encode("utf-8")).hexdigest()
    v = _VALIDATORS.get(key)
    if v is None:
        cls = jsonschema.validators.validator_for(json_schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(json_schema)
        if len(_VALIDATORS) > 32:
            _VALIDATORS.clear()
        v = _VALIDATORS[key] = cls(json_schema)
    return v


def check_answer(obj: Any, json_schema: dict[str, Any], *, closed: bool = False) -> list[dict[str, Any]]:
    """Validate ``obj`` with the ``jsonschema`` library against ``json_schema``; return its points.

    Returns ``[{"type", "value", "confidence"}, ...]``. In open mode values get surrounding
    whitespace stripped and inner runs collapsed (closed-mode values are exact vocabulary
    entries and are kept as they are); blank values are dropped; duplicates of one
    (type, value) (case-insensitive) are merged keeping the highest confidence.
    Raises :class:`InvalidOutput` (``schema_violation``) on any violation or when nothing remains.
    """
    errors = sorted(_validator(json_schema).iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "<root>"
        raise InvalidOutput("schema_violation", f"{where}: {e.message}"[:500])
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for p in obj["points"]:
        value = p["value"] if closed else " ".join(p["value"].split())
        if not value.strip():
            continue
        key = (p["type"], value.lower())
        conf = float(p["confidence"])
        if key not in best or conf > best[key]["confidence"]:
            best[key] = {"type": p["type"], "value": value, "confidence": conf}
    if not best:
        raise InvalidOutput("schema_violation", "every value is blank")
    return list(best.values())


def load_schema(path: str | Path | None = None) -> KnowledgeSchema:
    """Load and check a schema TOML file (default: the one shipped with posterkg)."""
    p = Path(path) if path is not None else DEFAULT_SCHEMA_PATH
    return schema_from_dict(read_toml(p, what="knowledge schema"), source=p)


def schema_from_dict(data: Mapping[str, Any], source: Path | None = None) -> KnowledgeSchema:
    where = str(source) if source else "schema"
    known = {"version", "max_points", "max_value_length", "confidence_levels", "instructions", "types"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def int_in(key: str, default: int, lo: int, hi: int) -> int:
        v = data.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{where}: {key} must be an integer in {lo}..{hi}, got {v!r}")
        return v

    max_points = int_in("max_points", 12, 1, 100)
    max_len = int_in("max_value_length", 40, 1, 200)
    levels = [_normalise_level(x) for x in data.get("confidence_levels", KnowledgeSchema.confidence_levels)]
    if not levels or levels != sorted(set(levels)):
        raise ConfigError(f"{where}: confidence_levels must be a non-empty increasing list")
    raw_types = data.get("types")
    if not isinstance(raw_types, list) or not raw_types:
        raise ConfigError(f"{where}: needs at least one [[types]] table")
    value_re = re.compile(f"{VALUE_CHARSET}{{1,{max_len}}}")
    types: list[KnowledgeType] = []
    for i, t in enumerate(raw_types):
        if not isinstance(t, dict) or set(t) - {"name", "description", "examples"}:
            raise ConfigError(f"{where}: types[{i}] must have only name, description, examples")
        name = t.get("name")
        if not isinstance(name, str) or not _TYPE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: types[{i}].name must be an identifier, got {name!r}")
        if name in {k.name for k in types}:
            raise ConfigError(f"{where}: type {name} is defined twice")
        desc = t.get("description", "")
        examples = t.get("examples", [])
        if not isinstance(desc, str) or not isinstance(examples, list):
            raise ConfigError(f"{where}: type {name}: description must be a string, examples a list")
        for ex in examples:
            if not isinstance(ex, str) or not value_re.fullmatch(ex):
                raise ConfigError(
                    f"{where}: type {name}: example {ex!r} is not a valid value (printable ASCII "
                    f"without quotes or backslashes, 1..{max_len} characters)")
        types.append(KnowledgeType(name, desc.strip(), tuple(examples)))
    instructions = data.get("instructions", "")
    if not isinstance(instructions, str):
        raise ConfigError(f"{where}: instructions must be a string")
    return KnowledgeSchema(
        types=types, max_points=max_points, max_value_length=max_len,
        confidence_levels=tuple(levels), instructions=instructions.strip(),
        version=int_in("version", 1, 1, 10**6), source=source,
    )
