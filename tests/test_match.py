"""The matcher's modes, normalization and reasons, and parsing of student output."""

import pytest

from tooldistill.match import compare, parse_message, parse_text, resolve_names
from tooldistill.match.consistency import consensus, consistency_report
from tooldistill.match.stats import paired_difference, wilson_interval
from tooldistill.schema import Message, ToolCall, ToolSpec, Trace

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer"},
        "detailed": {"type": "boolean"},
        "hours": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["city"],
}
SCHEMAS = {"get_weather": WEATHER, "send_email": {"type": "object", "properties": {"to": {"type": "string"}}}}


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


PARIS = [call("get_weather", city="Paris", unit="celsius")]


@pytest.mark.parametrize(
    "predicted",
    [
        [call("get_weather", city="Paris")],  # the default filled in
        [call("get_weather", city="Paris", unit="Celsius")],  # enum member in another case
        [call("get_weather", city="Paris", unit="celsius", days=None)],  # null for an optional
    ],
)
def test_schema_aware_normalization_makes_equal_forms_match(predicted):
    assert compare(predicted, PARIS, "chain", SCHEMAS).match


def test_numbers_booleans_and_json_strings_are_coerced_by_schema():
    reference = [call("get_weather", city="Paris", days=3, detailed=True, hours=[1, 2])]
    loose = [call("get_weather", city="Paris", days="3", detailed="true", hours="[1, 2.0]")]
    assert compare(loose, reference, "chain", SCHEMAS).match
    assert compare([call("f", x=1.0)], [call("f", x=1)], "chain").match  # 1 == 1.0
    verdict = compare([call("f", x=True)], [call("f", x=1)], "chain")  # but True is not 1
    assert not verdict.match and verdict.reason == "call to f: argument x: expected 1, got True"


@pytest.mark.parametrize(
    ("predicted", "reference", "mode", "reason"),
    [
        ([call("get_forecast", city="Paris")], PARIS, "chain", "called get_forecast, expected get_weather"),
        (
            [call("get_weather", city="Paris", unit="C")],
            PARIS,
            "chain",
            "call to get_weather: argument unit: expected 'celsius', got 'C'",
        ),
        (
            [call("send_email", to="a@x.org")],
            [call("send_email", to="a@x.org"), call("send_email", to="b@x.org")],
            "set",
            "missing second call to send_email(to='b@x.org')",
        ),
        (
            [call("get_weather", city="Paris")],
            [],
            "chain",
            "called a tool where none was expected (get_weather)",
        ),
        ([], PARIS, "set", "made no call; expected get_weather(city='Paris', unit='celsius')"),
        (
            [call("get_weather", city="Paris", zip="75001")],
            [call("get_weather", city="Paris")],
            "chain",
            "call to get_weather: unexpected argument zip='75001'",
        ),
        (
            [call("send_email", to="b"), call("get_weather", city="Paris")],
            [call("get_weather", city="Paris"), call("send_email", to="b")],
            "chain",
            "right calls in the wrong order: expected get_weather, send_email; got send_email, get_weather",
        ),
        ([call("a"), call("b"), call("b")], [call("a"), call("b")], "names", "extra call to b"),
    ],
)
def test_mismatch_reasons_name_the_problem(predicted, reference, mode, reason):
    verdict = compare(predicted, reference, mode, SCHEMAS)
    assert not verdict.match
    assert verdict.reason == reason
    assert 0.0 <= verdict.score < 1.0


def test_modes_differ_where_they_should():
    reference = [call("get_weather", city="Paris"), call("send_email", to="b")]
    swapped = list(reversed(reference))
    assert not compare(swapped, reference, "chain", SCHEMAS).match
    assert compare(swapped, reference, "set", SCHEMAS).match
    wrong_args = [call("get_weather", city="Rome"), call("send_email", to="c")]
    assert compare(wrong_args, reference, "names", SCHEMAS).match
    assert not compare(wrong_args, reference, "set", SCHEMAS).match
    assert compare([], [], "chain").reason == "no call, as expected"


def test_partial_scores_order_by_closeness():
    reference = [call("get_weather", city="Paris", unit="celsius", days=3)]
    one_wrong = compare(
        [call("get_weather", city="Paris", unit="celsius", days=4)], reference, "chain", SCHEMAS
    )
    all_wrong = compare(
        [call("get_weather", city="Rome", unit="fahrenheit", days=1)], reference, "chain", SCHEMAS
    )
    wrong_tool = compare([call("get_time", city="Paris")], reference, "chain", SCHEMAS)
    assert 1.0 > one_wrong.score > all_wrong.score > wrong_tool.score == 0.0


def test_bfcl_mode_uses_acceptable_values():
    acceptable = [
        {"name": "get_weather", "arguments": {"city": ["Paris", "Paris, France"], "unit": ["", "celsius"]}}
    ]
    ok = compare([call("get_weather", city="paris, france")], [], "bfcl", SCHEMAS, acceptable)
    assert ok.match  # BFCL compares strings without case, spaces and punctuation
    bad = compare([call("get_weather", city="Lyon")], [], "bfcl", SCHEMAS, acceptable)
    assert (
        bad.reason
        == "call to get_weather: argument city: expected one of 'Paris', 'Paris, France', got 'Lyon'"
    )
    with pytest.raises(ValueError, match="unknown match mode"):
        compare([], [], "fuzzy")


@pytest.mark.parametrize(
    ("output", "calls", "error"),
    [
        (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            [("get_weather", {"city": "Paris"})],
            None,
        ),
        (
            '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"x": 1}}</tool_call>',
            [("a", {}), ("b", {"x": 1})],
            None,
        ),
        (
            'Sure.\n```json\n{"name": "get_weather", "parameters": {"city": "Oslo"}}\n```',
            [("get_weather", {"city": "Oslo"})],
            None,
        ),
        (
            '[get_weather(city="Paris", days=3), spotify.play(artist="Taylor Swift", duration=20)]',
            [
                ("get_weather", {"city": "Paris", "days": 3}),
                ("spotify.play", {"artist": "Taylor Swift", "duration": 20}),
            ],
            None,
        ),
        (
            '<think>the user wants weather</think>get_weather(city="Paris")',
            [("get_weather", {"city": "Paris"})],
            None,
        ),
        (
            '[{"calc_area": "{\\"base\\": 10, \\"height\\": 5}"}]',
            [("calc_area", {"base": 10, "height": 5})],
            None,
        ),
        (
            '{"tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\\"q\\": [1, 2]}"}}]}',
            [("f", {"q": [1, 2]})],
            None,
        ),
        ("I don't have a tool for that; the area is 12.", [], None),
        ("No tool fits; in Python:\n```python\ndef area(b, h):\n    return b * h / 2\n```", [], None),
        ("The primes are:\n```\n[2, 3, 5]\n```", [], None),
        ("[calc(speed=v, n=3)]", [("calc", {"speed": "v", "n": 3})], None),  # a variable, kept by name
        ("", [], None),
        ('{"name": "get_weather", "arguments": {"city": ', [], "unparseable: invalid JSON"),
        ("[get_weather('Paris')]", [], "unparseable: get_weather: positional arguments"),
        ('[run(cmd=__import__("os").system("id"))]', [], "unparseable: run: argument cmd is not a literal"),
        ('<tool_call>{"name": "x", "arguments": {"a": 1}', [], "unparseable: <tool_call> block"),
        ('```json\n{"arguments": {"a": 1}}\n```', [], "unparseable: fenced block: object has no tool name"),
    ],
)
def test_parsing_real_looking_outputs(output, calls, error):
    parsed = parse_text(output)
    assert [(c.name, c.arguments) for c in parsed.calls] == calls
    if error is None:
        assert parsed.error is None
    else:
        assert parsed.error is not None and parsed.error.startswith(error)


def test_openai_messages_and_name_resolution():
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "math_factorial", "arguments": '{"n": 5}'}}
        ],
    }
    parsed = parse_message(message)
    assert parsed.ok and parsed.calls[0].id == "c1"
    resolved = resolve_names(parsed.calls, ["math.factorial", "math.gcd"])
    assert resolved[0].name == "math.factorial"
    broken = parse_message({"tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]})
    assert broken.error.startswith("unparseable: f: arguments are not valid JSON")


def _trace(samples, reference):
    return Trace(
        source_id="t",
        source="test",
        messages=[Message(role="user", content="weather?")],
        tools=[ToolSpec(name="get_weather", parameters=WEATHER)],
        reference_calls=[ToolCall(**c) for c in reference],
        teacher_samples=[[ToolCall(**c) for c in s] for s in samples],
    ).with_id()


def test_consistency_ceiling_and_consensus():
    paris = [call("get_weather", city="Paris")]
    rome = [call("get_weather", city="Rome")]
    unanimous = _trace([paris, [call("get_weather", city="Paris", unit="celsius")], paris], paris)
    split = _trace([paris, rome, rome], paris)
    tie = _trace([rome, paris], paris)
    single = _trace([paris], paris)
    result = consensus(split)
    assert (
        result.calls[0].arguments == {"city": "Rome"}
        and not result.tie
        and result.support == pytest.approx(2 / 3)
    )
    assert consensus(tie).tie and consensus(tie).calls[0].arguments == {
        "city": "Rome"
    }  # earliest sample wins
    assert consensus(single) is None
    report = consistency_report([unanimous, split, tie, single])
    assert report["traces_with_samples"] == 3
    assert report["all_agree"]["matched"] == 1 and report["all_agree"]["rate"] == pytest.approx(
        1 / 3, abs=1e-3
    )
    assert report["mean_pairwise_agreement"] == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-3)
    assert report["ties"] == 1
    assert report["consensus_equals_reference"]["matched"] == 1  # unanimous only (split → Rome)


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and 0.69 < low < 0.73


def paired(both: int, gained: int, lost: int, neither: int) -> tuple[dict[str, bool], dict[str, bool]]:
    """(before, after) verdicts by example id with those cell counts."""
    before, after = {}, {}
    cells = [(both, True, True), (gained, False, True), (lost, True, False), (neither, False, False)]
    for count, was, now in cells:
        for _ in range(count):
            before[str(len(before))], after[str(len(after))] = was, now
    return before, after


def test_paired_difference_matches_a_published_table():
    # a paired 2x2 table (59 both, 6 and 16 discordant, 80 neither) worked in Fagerland, Lydersen and
    # Laake's "Statistical Analysis of Contingency Tables" (ch. 8): Newcombe's square-and-add interval
    # -0.1186 to -0.0046 around -0.0621; McNemar's exact test p = 0.052
    result = paired_difference(*paired(59, 6, 16, 80))
    assert (result["n"], result["gained"], result["lost"]) == (161, 6, 16)
    assert result["difference"] == pytest.approx(-0.0621, abs=1e-4)
    assert result["ci95"] == pytest.approx([-0.1186, -0.0046], abs=1e-4)
    assert result["p_value"] == pytest.approx(0.0525, abs=1e-3)


def test_paired_difference_rests_on_the_discordant_traces():
    # the demo's finetune phase against its baseline: 14 both, 20 gained, 1 lost, 80 neither
    gain = paired_difference(*paired(14, 20, 1, 80))
    assert gain["difference"] == pytest.approx(19 / 115, abs=1e-4)
    assert 0.05 < gain["ci95"][0] < gain["difference"] < gain["ci95"][1]  # clear of zero
    assert gain["p_value"] < 1e-4
    # the same two marginal rates (34/115 against 15/115) from mostly different traces: a wash
    churn = paired_difference(*paired(0, 34, 15, 66))
    assert churn["difference"] == gain["difference"]
    assert churn["p_value"] > 0.005 and churn["ci95"][0] < gain["ci95"][0]
    # nothing changed: no evidence either way; only ids scored on both sides count
    before, after = paired(10, 0, 0, 10)
    before["only-before"] = True
    same = paired_difference(before, after)
    assert (same["n"], same["difference"], same["p_value"]) == (20, 0.0, 1.0)
    assert same["ci95"][0] < 0 < same["ci95"][1]
    assert paired_difference({}, {})["difference"] is None
