"""Structured output (autoregressive/structured.py): every output of held-out schemas, regexes and choices is valid."""

import json
import re
from pathlib import Path

import pytest

from genlab.autoregressive.sampling import SamplingParams
from genlab.autoregressive.structured import Constraint, closed, grammar_of
from genlab.errors import GenlabError

jsonschema = pytest.importorskip("jsonschema")
SPECS = json.loads((Path(__file__).parent / "data" / "structured_specs.json").read_text())


@pytest.fixture(scope="module")
def gen():
    from genlab.text.generator import TextGenerator

    return TextGenerator()  # the bundled SmolLM2 on its default engine


def assert_valid(spec: dict, text: str) -> None:
    if "json_schema" in spec:
        jsonschema.validate(json.loads(text), spec["json_schema"], format_checker=jsonschema.FormatChecker())
    elif "regex" in spec:
        assert re.fullmatch(spec["regex"], text), (spec["regex"], text)
    else:
        assert text in spec["choice"]


def test_every_output_of_the_held_out_specs_parses_and_validates(gen):
    """38 schemas, regexes and choice lists written before genlab was run on them (tests/data/structured_specs.json),
    at the default sampling settings (temperature 0.7, 256 tokens, speculative auto): all valid."""
    assert len(SPECS) >= 30
    for i, spec in enumerate(SPECS):
        fields = {k: v for k, v in spec.items() if k != "prompt"}
        out = gen.complete(spec["prompt"], seed=i, **fields)
        assert out.finish_reason == "stop", (spec["prompt"], out.text)
        assert_valid(spec, out.text)


def test_seeds_streaming_and_engines_agree(gen):
    """The same seed gives the same valid text streamed or not, with or without speculative decoding (greedy),
    and on the float torch engine as on the 4-bit default."""
    from genlab.text.generator import TextGenerator

    spec = SPECS[8]  # a nested object with a patterned zip code
    fields = {k: v for k, v in spec.items() if k != "prompt"}
    once = gen.complete(spec["prompt"], seed=3, **fields)
    assert "".join(p.text for p in gen.stream(spec["prompt"], seed=3, **fields)) == once.text
    assert gen.generate(spec["prompt"], seed=3, **fields) == once.text
    greedy = {k: gen.generate(spec["prompt"], temperature=0, speculative=k, **fields) for k in ("off", "lookup")}
    assert greedy["off"] == greedy["lookup"]
    assert_valid(spec, greedy["off"])
    torch_engine = TextGenerator(engine="torch")
    assert_valid(spec, torch_engine.generate(spec["prompt"], seed=3, **fields))
    logprobs = gen.complete(spec["prompt"], seed=3, top_logprobs=3, **fields)
    assert len(logprobs.tokens) == logprobs.stats.completion_tokens and all(len(t.top) == 3 for t in logprobs.tokens)


def test_the_mask_allows_exactly_the_tokens_that_keep_the_text_valid(gen):
    tok = gen.tokenizer
    c = Constraint(grammar_of("choice", ["yes", "no"]), tok, gen.lm.stop_token_ids)
    allowed = c.allowed(tok.vocab_size).nonzero().flatten().tolist()
    texts = {tok.token_text(t) for t in allowed}
    assert texts and all("yes".startswith(t) or "no".startswith(t) for t in texts) and {"yes", "no"} <= texts
    [yes] = tok.encode("yes")
    c.consume(yes)
    assert c.allowed(tok.vocab_size).nonzero().flatten().tolist() == sorted(gen.lm.stop_token_ids & set(range(tok.vocab_size)))
    # a draft's guesses are cut at the first one the grammar refuses
    c = Constraint(grammar_of("regex", r"\d{3}-\d{4}"), tok, gen.lm.stop_token_ids)
    assert c.valid_prefix(tok.encode("555-1234")) == len(tok.encode("555-1234"))
    assert c.valid_prefix(tok.encode("555") + tok.encode("x")) == len(tok.encode("555"))
    assert c.allowed(tok.vocab_size + 64)[-64:].sum() == 0  # padding rows of a larger head are never allowed


def test_closed_schemas_forbid_invented_keys_and_stay_valid_for_the_original():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}},
                                               "c": {"type": "array", "items": {"type": "object", "properties": {}}}},
              "$defs": {"d": {"properties": {"e": {"type": "integer"}}}}}
    out = closed(schema)
    assert out["additionalProperties"] is False and out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["c"]["items"]["additionalProperties"] is False and out["$defs"]["d"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the caller's schema is not modified
    assert closed({"type": "object", "additionalProperties": True, "properties": {}})["additionalProperties"] is True
    email = closed({"type": "string", "format": "email"})
    assert re.fullmatch(email["pattern"].strip("^$"), "ada@example.org") and "format" not in email


@pytest.mark.parametrize("kw,message", [
    (dict(json_schema={"type": "object", "not": {"required": ["a"]}}), 'json_schema is invalid or unsupported: keywords genlab\'s grammar engine (llguidance) does not implement: ["not"]'),
    (dict(json_schema={"type": "nothing"}), "json_schema is invalid or unsupported: Invalid type: nothing"),
    (dict(json_schema={"type": "integer", "minimum": 5, "maximum": 2}), "Unsatisfiable schema: minimum (5) is greater than maximum (2)"),
    (dict(json_schema={"$ref": "https://example.com/s.json"}), "json_schema is invalid or unsupported: Resource"),
    (dict(json_schema=[1]), "json_schema must be a JSON Schema object"),
    (dict(regex="(ab"), 'regex is invalid or unsupported: invalid regex "(ab": unclosed group'),
    (dict(regex="(?<=a)b"), "look-around, including look-ahead and look-behind, is not supported"),
    (dict(regex=""), "regex must be a non-empty regular expression"),
    (dict(choice=["a", ""]), "choice must be a non-empty list of non-empty strings"),
    (dict(grammar="start: missing"), 'grammar is invalid or unsupported: unknown name: "missing"'),
    (dict(grammar="root ::= ("), "grammar is not valid GBNF"),
    (dict(regex="a", grammar="start: \"a\""), "give one output format at a time, not regex and grammar"),
    (dict(choice=["a"], ignore_eos=True), "ignore_eos cannot be combined with choice"),
])
def test_bad_formats_are_one_line(kw, message):
    with pytest.raises(GenlabError) as e:
        SamplingParams(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_structured_flags(tmp_path, capsys):
    from genlab.cli import main

    schema = tmp_path / "point.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                                  "required": ["x", "y"]}))
    grammar = tmp_path / "answer.gbnf"
    grammar.write_text('root ::= "The answer is " [0-9] [0-9]? "."\n')
    for args, ok in [(["--json-schema", str(schema)], lambda t: set(json.loads(t)) == {"x", "y"}),
                     (["--json-schema", "{}"], lambda t: isinstance(json.loads(t), dict)),
                     (["--choice", "up,down"], lambda t: t in ("up", "down")),
                     (["--regex", r"[A-Z]{3}"], lambda t: re.fullmatch("[A-Z]{3}", t)),
                     (["--grammar", str(grammar)], lambda t: re.fullmatch(r"The answer is \d\d?\.", t))]:
        with pytest.raises(SystemExit) as e:
            main(["text", "Give a point on a grid.", "--seed", "1", *args])
        out = capsys.readouterr().out.strip()
        assert e.value.code == 0 and ok(out), (args, out)
    for args, message in [(["--json-schema", str(tmp_path / "missing.json")], "--json-schema " + str(tmp_path / "missing.json") + ": no such file"),
                          (["--json-schema", "{oops"], "--json-schema is not valid JSON"),
                          (["--regex", "[z-a]"], "--regex is invalid or unsupported"),
                          (["--regex", "a", "--choice", "a"], "give one output format at a time, not --regex and --choice"),
                          (["--grammar", str(schema)], "--grammar is invalid or unsupported")]:
        with pytest.raises(SystemExit) as e:
            main(["text", "hi", *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, (args, err)
