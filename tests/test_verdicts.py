import pytest

from annotation.judging.figures import JudgeTally, tally_verdict
from annotation.judging.verdicts import (
    Verdict,
    combine_canonical,
    combine_orders,
    panel_consensus,
    parse_verdict,
    to_canonical,
)

GOOD = [
    ("bare object", '{"reasoning": "A is grounded.", "preferred": "A"}', "A", "A is grounded."),
    ("whitespace around", '\n\n  {"reasoning": "r", "preferred": "B"}  \n', "B", "r"),
    ("tie", '{"reasoning": "equal", "preferred": "tie"}', "tie", "equal"),
    ("lower-case a", '{"reasoning": "r", "preferred": "a"}', "A", "r"),
    ("upper-case TIE", '{"reasoning": "r", "preferred": "TIE"}', "tie", "r"),
    ("preferred before reasoning", '{"preferred": "B", "reasoning": "r"}', "B", "r"),
    ("reasoning missing", '{"preferred": "B"}', "B", ""),
    ("extra keys allowed", '{"reasoning": "r", "preferred": "A", "confidence": 0.8}', "A", "r"),
    ("json fence", '```json\n{"reasoning": "r", "preferred": "A"}\n```', "A", "r"),
    ("fence without language", '```\n{"reasoning": "r", "preferred": "B"}\n```', "B", "r"),
    (
        "prose around the fence",
        'Let me compare.\n```json\n{"reasoning": "r", "preferred": "tie"}\n```\nThat is my verdict: B was close.',
        "tie",
        "r",
    ),
    (
        "braces and digits in the reasoning",
        '{"reasoning": "A has {3} items, B has 9", "preferred": "A"}',
        "A",
        "A has {3} items, B has 9",
    ),
    (
        "fence quoted inside the reasoning",
        '{"reasoning": "B wraps code in ```python``` blocks", "preferred": "A"}',
        "A",
        "B wraps code in ```python``` blocks",
    ),
    (
        "HTML and script in the reasoning, kept verbatim",
        '{"reasoning": "<b>A</b> is better <script>alert(\\"x\\")</script>", "preferred": "A"}',
        "A",
        '<b>A</b> is better <script>alert("x")</script>',
    ),
    ("unicode", '{"reasoning": "Größe – ok ✓", "preferred": "B"}', "B", "Größe – ok ✓"),
]

BAD = [
    ("empty", "", "empty output"),
    ("whitespace", "  \n ", "empty output"),
    ("None", None, "empty output"),
    ("prose only", "Profile A is better because it is grounded. Score: 1", "no JSON object"),
    ("prose with a digit (the original took the last one)", "I rate A 4 and B 5.", "no JSON object"),
    ("two objects", '{"preferred": "A"}\n{"preferred": "B"}', "2 JSON objects; expected exactly one"),
    (
        "two fenced blocks",
        '```json\n{"preferred": "A"}\n```\nOn reflection:\n```json\n{"preferred": "B"}\n```',
        "2 fenced blocks; expected exactly one",
    ),
    (
        "fenced block plus a bare object",
        '{"preferred": "B"}\n```json\n{"preferred": "A"}\n```',
        "a JSON object outside the fenced block as well",
    ),
    ("prose around, no fence", 'My answer: {"reasoning": "r", "preferred": "A"}', "text around the JSON object"),
    ("two objects in one fence", '```json\n{"preferred": "A"} {"preferred": "B"}\n```', "2 JSON objects in the fenced"),
    ("preferred is a number", '{"reasoning": "r", "preferred": 3}', 'must be "A", "B" or "tie", got 3'),
    ("preferred is C", '{"reasoning": "r", "preferred": "C"}', 'got "C"'),
    ("preferred is a phrase", '{"reasoning": "r", "preferred": "Profile A"}', 'got "Profile A"'),
    ("preferred with spaces", '{"reasoning": "r", "preferred": " A"}', 'got " A"'),
    ("preferred is null", '{"reasoning": "r", "preferred": null}', "got null"),
    ("preferred is a list", '{"reasoning": "r", "preferred": ["A"]}', 'got ["A"]'),
    ("preferred missing", '{"reasoning": "both fine", "winner": "A"}', "missing 'preferred'"),
    ("duplicate key (json keeps the last)", '{"preferred": "A", "preferred": "B"}', "duplicate key 'preferred'"),
    ("reasoning not a string", '{"reasoning": ["x"], "preferred": "A"}', "'reasoning' must be a string, got an array"),
    ("truncated JSON", '{"reasoning": "A is better because', "malformed or truncated JSON"),
    ("truncated after prose", 'Verdict: {"reasoning": "r", "prefer', "malformed or truncated JSON"),
    ("unclosed fence", '```json\n{"reasoning": "r", "preferred": "A"}', "unclosed code fence"),
    ("single quotes are not JSON", "{'reasoning': 'r', 'preferred': 'A'}", "malformed or truncated JSON"),
    ("array", '[{"preferred": "A"}]', "expected a JSON object, got an array"),
    ("string", '"A"', "expected a JSON object, got a string"),
    ("number", "1", "expected a JSON object, got a number"),
    ("empty fence", "```json\n```", "no JSON object in the fenced block"),
    ("HTML only", "<p>Profile <b>A</b></p>", "no JSON object"),
]


@pytest.mark.parametrize(("text", "preferred", "reasoning"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_outputs(text, preferred, reasoning):
    assert parse_verdict(text) == Verdict(preferred=preferred, reasoning=reasoning, error="")
    assert parse_verdict(text).valid


@pytest.mark.parametrize(("text", "error"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_outputs(text, error):
    verdict = parse_verdict(text)
    assert verdict.preferred is None
    assert not verdict.valid
    assert error in verdict.error


# Canonical terms: order "ab" shows a first (as "A"), order "ba" shows b first (so "A" means b).
@pytest.mark.parametrize(
    ("preferred", "order", "canonical"),
    [
        ("A", "ab", "a"),
        ("B", "ab", "b"),
        ("A", "ba", "b"),
        ("B", "ba", "a"),
        ("tie", "ab", "tie"),
        ("tie", "ba", "tie"),
        (None, "ba", None),
    ],
)
def test_to_canonical(preferred, order, canonical):
    assert to_canonical(preferred, order) == canonical


@pytest.mark.parametrize(("preferred", "order"), [("a", "ab"), ("C", "ab"), ("A", "AB"), ("A", "xy")])
def test_to_canonical_refuses_unknown_labels(preferred, order):
    with pytest.raises(ValueError):
        to_canonical(preferred, order)


@pytest.mark.parametrize(
    ("first", "second", "combined"),
    [
        ("A", "B", "a"),  # a chosen in both orders
        ("B", "A", "b"),  # b chosen in both orders
        ("tie", "tie", "tie"),
        ("A", "A", "inconsistent"),  # always the first shown: position bias, not a preference
        ("B", "B", "inconsistent"),  # always the second shown
        ("A", "tie", "inconsistent"),  # a preference that does not survive the swap is not a win
        ("tie", "B", "inconsistent"),
        (None, "B", "invalid"),
        ("A", None, "invalid"),
        (None, None, "invalid"),
    ],
)
def test_combine_orders(first, second, combined):
    assert combine_orders(first, second) == combined


def test_combine_canonical_refuses_presentation_labels():
    with pytest.raises(ValueError):
        combine_canonical("A", "a")


@pytest.mark.parametrize(
    ("votes", "threshold", "result"),
    [
        (["a", "a", "a"], 1.0, "a"),
        (["a", "a", "b"], 1.0, "no_consensus"),
        (["a", "a", "b"], 2 / 3, "a"),  # exactly at the threshold passes
        (["a", "a", "b"], 0.51, "a"),
        (["a", "b"], 0.51, "no_consensus"),  # 50% is not a majority
        (["a", "b", "invalid", "invalid"], 0.51, "no_consensus"),
        (["a", "invalid", "invalid"], 1.0, "a"),  # invalid outputs are not votes
        (["tie", "tie", "a"], 0.6, "tie"),
        (["inconsistent", "inconsistent", "a"], 0.6, "inconsistent"),
        (["invalid", "invalid"], 0.51, "no_consensus"),
        ([], 1.0, "no_consensus"),
    ],
)
def test_panel_consensus(votes, threshold, result):
    assert panel_consensus(votes, threshold) == result


@pytest.mark.parametrize("threshold", [0.5, 0.2, 1.01, 0])
def test_panel_threshold_must_crown_at_most_one_label(threshold):
    with pytest.raises(ValueError, match="threshold"):
        panel_consensus(["a"], threshold)


def test_panel_refuses_presentation_labels():
    with pytest.raises(ValueError, match="unknown"):
        panel_consensus(["A", "a"], 1.0)


def _tally(pairs) -> JudgeTally:
    """One judge's presentation verdicts (first: a shown first, second: b shown first), counted as stored."""
    tally = JudgeTally("j")
    for first, second in pairs:
        ab, ba = to_canonical(first, "ab"), to_canonical(second, "ba")
        tally_verdict(tally, ab, ba, n=2, n_invalid=(ab is None) + (ba is None))
    return tally


def test_order_flip_accounting():
    # One judge over six comparisons, each judged in both orders (first: a shown first).
    pairs = [
        ("A", "B"),  # consistent: a
        ("B", "A"),  # consistent: b
        ("A", "A"),  # flip: picked the first shown both times
        ("tie", "tie"),  # consistent tie
        ("A", "tie"),  # flip to tie
        (None, "A"),  # invalid: not counted
    ]
    tally = _tally(pairs)
    # 5 valid pairs, 2 of them changed with the order.
    assert (tally.flips, tally.both_orders_valid) == (2, 5)
    # Decisive single verdicts: A,B,B,A,A,A,A,A (ties and None left out) → 6 of 8 chose the first shown.
    assert (tally.first_position, tally.decisive) == (6, 8)
    assert (tally.invalid, tally.verdicts) == (1, 12)


def test_flip_accounting_degenerate():
    assert _tally([]).both_orders_valid == 0
    assert _tally([(None, "A")]).both_orders_valid == 0
    assert _tally([("tie", None)]).decisive == 0
    assert _tally([("A", "B")]).flips == 0
