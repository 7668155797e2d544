"""The knowledge schema: loading, hashing, JSON schemas (open/closed), token budget, validation."""

from __future__ import annotations

import json
import random

import pytest

from posterkg.errors import ConfigError
from posterkg.vlm.knowledge import (
    COMPACT_SEPARATORS, SEPARATORS, InvalidOutput, load_schema, parse_answer, schema_from_dict,
)

TYPES = ["Color_Palette", "Visual_Mood", "Composition", "Lighting", "Texture",
         "Character_Presentation", "Era_Style", "Genre_Visual", "Typography", "Others"]
PRINTABLE = [chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\']

VOCAB = {
    "Color_Palette": ["warm palette", "dominant red", "暖色调", 'quote"and\\slash'],
    "Lighting": ["low-key lighting", "高对比度的戏剧性光影效果"],
    "Others": ["x"],
}


@pytest.fixture(scope="module")
def schema():
    return load_schema()


def test_default_schema_has_the_ten_types(schema):
    assert schema.type_names == TYPES
    for t in schema.types:
        assert t.description and len(t.examples) >= 3
    assert len(schema.hash) == 16


def test_hash_ignores_layout_but_not_content(tmp_path, schema):
    src = schema.source.read_text(encoding="utf-8")
    relaid = tmp_path / "a.toml"
    relaid.write_text("# a comment\n\n" + src.replace("max_points = 12", "max_points   =   12  # same"),
                      encoding="utf-8")
    assert load_schema(relaid).hash == schema.hash
    edited = tmp_path / "b.toml"
    edited.write_text(src.replace('"dominant red"', '"dominant crimson"'), encoding="utf-8")
    assert load_schema(edited).hash != schema.hash
    assert schema.spec_hash(VOCAB) != schema.hash                   # closed mode is another key
    assert schema.spec_hash(VOCAB) == schema.spec_hash({k: list(reversed(v)) for k, v in VOCAB.items()})


@pytest.mark.parametrize("bad, match", [
    ({"types": []}, "at least one"),
    ({"types": [{"name": "A b"}]}, "identifier"),
    ({"types": [{"name": "A"}, {"name": "A"}]}, "twice"),
    ({"types": [{"name": "A", "examples": ['say "hi"']}]}, "not a valid value"),
    ({"types": [{"name": "A"}], "confidence_levels": [0, 0.05, 1]}, "1/1024"),
    ({"types": [{"name": "A"}], "confidence_levels": [1, 0]}, "increasing"),
    ({"types": [{"name": "A"}], "max_points": 0}, "max_points"),
    ({"types": [{"name": "A"}], "colour": 1}, "unknown key"),
])
def test_bad_schemas_are_clean_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        schema_from_dict(bad)


def test_open_json_schema_shape(schema):
    js = schema.json_schema()
    assert js["additionalProperties"] is False and js["required"] == ["points"]
    arr = js["properties"]["points"]
    assert arr["minItems"] == 1 and arr["maxItems"] == schema.max_points
    item = arr["items"]
    assert list(item["properties"]) == ["type", "value", "confidence"]   # fixed order
    assert item["additionalProperties"] is False
    assert item["properties"]["type"]["enum"] == TYPES
    value = item["properties"]["value"]
    assert value == {"type": "string", "pattern": "^[ !#-\\[\\]-~]{1,40}$"}
    assert "maxLength" not in value
    assert item["properties"]["confidence"]["enum"] == [0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1]


def test_closed_json_schema_restricts_each_type(schema):
    js = schema.json_schema(VOCAB)
    cases = js["properties"]["points"]["items"]["anyOf"]
    assert [c["properties"]["type"]["const"] for c in cases] == ["Color_Palette", "Lighting", "Others"]
    assert cases[0]["properties"]["value"]["enum"] == sorted(VOCAB["Color_Palette"])
    good = {"points": [{"type": "Lighting", "value": "高对比度的戏剧性光影效果", "confidence": 0.5}]}
    assert schema.validate(good, VOCAB)[0]["value"] == "高对比度的戏剧性光影效果"
    for bad in ({"type": "Lighting", "value": "warm palette", "confidence": 1},   # other type's value
                {"type": "Lighting", "value": "LOW-KEY LIGHTING", "confidence": 1},
                {"type": "Texture", "value": "x", "confidence": 1}):              # type not in vocab
        with pytest.raises(InvalidOutput) as exc:
            schema.validate({"points": [bad]}, VOCAB)
        assert exc.value.reason == "schema_violation"
    with pytest.raises(ConfigError, match="does not know"):
        schema.json_schema({"Colour": ["red"]})


@pytest.mark.parametrize("obj", [
    {"points": []},
    {"points": [{"type": "Lighting", "value": "", "confidence": 0.5}]},
    {"points": [{"type": "Lighting", "value": "x" * 41, "confidence": 0.5}]},
    {"points": [{"type": "Lighting", "value": "caf\u00e9", "confidence": 0.5}]},
    {"points": [{"type": "Lighting", "value": "a\nb", "confidence": 0.5}]},
    {"points": [{"type": "Lighting", "value": "ok", "confidence": 0.3}]},
    {"points": [{"type": "Lighting", "value": "ok", "confidence": "1"}]},
    {"points": [{"type": "Mood", "value": "ok", "confidence": 1}]},
    {"points": [{"type": "Lighting", "value": "ok", "confidence": 1, "extra": 1}]},
    {"points": [{"type": "Lighting", "value": "ok"}]},
    {"points": [{"type": "Lighting", "value": "ok", "confidence": 1}] * 13},
    {"points": [], "other": 1},
    [{"type": "Lighting", "value": "ok", "confidence": 1}],
])
def test_open_validation_rejects(schema, obj):
    with pytest.raises(InvalidOutput) as exc:
        schema.validate(obj)
    assert exc.value.reason == "schema_violation"


def test_validation_normalises_and_merges(schema):
    obj = {"points": [
        {"type": "Lighting", "value": "  low   key ", "confidence": 0.25},
        {"type": "Lighting", "value": "Low key", "confidence": 0.75},
        {"type": "Texture", "value": "grainy", "confidence": 1},
        {"type": "Texture", "value": "   ", "confidence": 1},
    ]}
    pts = schema.validate(obj)
    assert pts == [{"type": "Lighting", "value": "Low key", "confidence": 0.75},  # best one kept
                   {"type": "Texture", "value": "grainy", "confidence": 1.0}]


@pytest.mark.parametrize("raw, finish, reason", [
    ('{"points": [{"type": "Lighting", "val', None, "truncated"),
    ('{"points": [{"type": "Lighting", "value": "a", "confidence": 1}', None, "truncated"),
    ('{"points": [{"type": "Lighting", "value": "a", "confidence": 1}]}', "length", None),
    ('{"points": [{"type": "Lighting", "value": "a", "confidence": 1}', "length", "truncated"),
    ("", "length", "truncated"),
    ("", "stop", "invalid_json"),
    ("I see a red poster", "stop", "invalid_json"),
    ('{"points": [}]}', "stop", "invalid_json"),
    ('{"points": []} trailing', "stop", "invalid_json"),
    ('```json\n{"points": [{"type": "Lighting", "value": "a", "confidence": 1}]}\n```', "stop", None),
])
def test_parse_classifies_failures(raw, finish, reason):
    if reason is None:
        assert parse_answer(raw, finish)["points"][0]["value"] == "a"
    else:
        with pytest.raises(InvalidOutput) as exc:
            parse_answer(raw, finish)
        assert exc.value.reason == reason


# -- the token budget --------------------------------------------------------------------------
def _maximal(schema, vocab=None):
    """An answer as long as the grammar allows, built independently of max_answer_bytes."""
    if vocab is None:
        t = max(schema.type_names, key=len)
        item = {"type": t, "value": "~" * schema.max_value_length}
    else:
        def item_len(t, v):
            return len(json.dumps(t)) + max(len(json.dumps(v)), len(json.dumps(v, ensure_ascii=False).encode()))
        t, v = max(((t, v) for t, vals in vocab.items() for v in vals), key=lambda tv: item_len(*tv))
        item = {"type": t, "value": v}
    item["confidence"] = max(schema.confidence_levels, key=lambda c: len(json.dumps(c)))
    return {"points": [dict(item) for _ in range(schema.max_points)]}


def _dumps_longest(obj, separators):
    """Serialise each string in whichever JSON spelling (raw UTF-8 or \\u escapes) is longer."""
    a = json.dumps(obj, separators=separators, ensure_ascii=False).encode()
    b = json.dumps(obj, separators=separators, ensure_ascii=True).encode()
    return max(a, b, key=len)


@pytest.mark.parametrize("vocab", [None, VOCAB], ids=["open", "closed"])
@pytest.mark.parametrize("separators", [SEPARATORS, COMPACT_SEPARATORS], ids=["xgrammar", "compact"])
def test_max_tokens_is_the_longest_answer_plus_eos(schema, vocab, separators):
    worst = _maximal(schema, vocab)
    schema.validate(worst, vocab)                                     # it is a valid answer
    assert len(_dumps_longest(worst, separators)) == schema.max_tokens(vocab, separators) - 1
    assert schema.max_tokens(vocab) >= schema.max_tokens(vocab, COMPACT_SEPARATORS)


@pytest.mark.parametrize("vocab", [None, VOCAB], ids=["open", "closed"])
def test_no_random_valid_answer_exceeds_the_budget(schema, vocab):
    rng = random.Random(0)
    allowed = list(schema.json_schema(vocab)["properties"]["points"]["items"].get("anyOf", []))
    budget = {s: schema.max_tokens(vocab, s) - 1 for s in (SEPARATORS, COMPACT_SEPARATORS)}
    longest = 0
    for _ in range(1500):
        pts = []
        for _ in range(rng.randint(1, schema.max_points)):
            if vocab is None:
                t = rng.choice(schema.type_names)
                # bias towards long values so the search visits the edge
                n = rng.choice([1, schema.max_value_length, rng.randint(1, schema.max_value_length)])
                v = rng.choice(PRINTABLE[1:]) + "".join(rng.choice(PRINTABLE) for _ in range(n - 1))
            else:
                case = rng.choice(allowed)["properties"]
                t, v = case["type"]["const"], rng.choice(case["value"]["enum"])
            pts.append({"type": t, "value": v, "confidence": rng.choice(schema.confidence_levels)})
        obj = {"points": pts}
        schema.validate(obj, vocab)
        for s, b in budget.items():
            n = len(_dumps_longest(obj, s))
            longest = max(longest, n)
            assert n <= b
    assert longest > 0.7 * budget[SEPARATORS]          # the search did get near the edge


def test_xgrammar_accepts_the_maximal_answer_and_nothing_longer(schema):
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as accepts

    small = schema_from_dict({"types": [{"name": "Lighting"}, {"name": "Character_Presentation"}],
                              "max_points": 3, "max_value_length": 6})
    grammar = xgr.Grammar.from_json_schema(small.json_schema(), any_whitespace=False)
    worst = _maximal(small)
    text = json.dumps(worst, separators=SEPARATORS)
    assert len(text.encode()) == small.max_tokens() - 1
    assert accepts(grammar, text)
    longer = json.loads(text)
    longer["points"][0]["value"] += "~"
    assert not accepts(grammar, json.dumps(longer, separators=SEPARATORS))
    longer = json.loads(text)
    longer["points"].append(longer["points"][0])
    assert not accepts(grammar, json.dumps(longer, separators=SEPARATORS))
    # control characters and quotes cannot sneak into a value
    assert not accepts(grammar, text.replace("~~~~~~", "~\\n~~~~", 1))
    assert not accepts(grammar, text.replace("~~~~~~", '~\\"~~~~', 1))

    closed = {"Lighting": ["暖色调", "low"]}
    g2 = xgr.Grammar.from_json_schema(small.json_schema(closed), any_whitespace=False)
    text = json.dumps(_maximal(small, closed), separators=SEPARATORS, ensure_ascii=False)
    assert accepts(g2, text)
    assert len(text.encode()) <= small.max_tokens(closed) - 1


def test_build_spec(schema):
    spec = schema.build_spec()
    assert spec.mode == "open" and spec.vocab is None and spec.schema_hash == schema.hash
    assert spec.max_tokens == schema.max_tokens() and "Typography" in spec.prompt
    closed = schema.build_spec(VOCAB)
    assert closed.mode == "closed" and closed.vocab["Lighting"] == sorted(VOCAB["Lighting"])
    assert "allowed values" in closed.prompt and "Texture" not in closed.prompt
    assert closed.schema_hash == schema.spec_hash(VOCAB)
