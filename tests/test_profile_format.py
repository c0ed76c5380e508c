import pytest

from annotation.profiles.format import (
    MAX_COMPETENCIES,
    MAX_DESCRIPTION_CHARS,
    MAX_NAME_CHARS,
    MIN_COMPETENCIES,
    Competency,
    ParsedProfile,
    align_competencies,
    format_profile,
    is_near_duplicate,
    normalise_name,
    parse_profile,
    profile_similarity,
)

NAMES = [
    "Machine learning",
    "Bayesian statistics",
    "Genome sequencing",
    "Protein structure prediction",
    "Scientific software engineering",
    "Clinical trial design",
    "Data visualisation",
    "Microscopy image analysis",
    "Epidemiological modelling",
    "Research supervision",
]


def items(n: int, bullet: str = "- ") -> str:
    """n distinct, well-formed competency lines."""
    names = [NAMES[i % 10] + (f" {i}" if i >= 10 else "") for i in range(n)]
    return "\n".join(f"{bullet}{name}: The abstracts report work on topic {i}." for i, name in enumerate(names))


def profile(n: int = 3, domain: str = '"Computational biology"') -> str:
    return f"Domain: {domain}\n\nCompetencies:\n{items(n)}"


SMOLLM_STYLE = """Sure! Here is the competency profile based on the abstracts:

**Domain:** "Computational Genomics"

**Competencies:**

1. **Sequence Alignment**: The abstracts describe new alignment algorithms for long reads
   and benchmark them against existing tools.

2. **Statistical Genetics**: Association studies on large cohorts are reported.

3. **High-Performance Computing**: The authors parallelise their pipelines on GPU clusters.

I hope this helps! Let me know if you need anything else."""

CODE_DRIFT = profile(3) + """

```python
def extract_competencies(text):
    return text.split("\\n")
```"""

CASES = [
    # --- valid, canonical and at the limits
    ("canonical", profile(3), True, ""),
    ("eight is the maximum", profile(MAX_COMPETENCIES), True, ""),
    # --- valid with harmless noise
    (
        "bold markers",
        '**Domain:** "Ecology"\n\n**Competencies:**\n- **Field surveys**: Counts birds.\n'
        "- **Species modelling:** Fits occupancy models.\n- **Remote sensing**: Uses satellite images.",
        True,
        "",
    ),
    ("numbered 1.", "Domain: Ecology\nCompetencies:\n1. A survey: x y.\n2. B model: x y.\n3. C maps: x y.", True, ""),
    ("numbered 1)", "Domain: Ecology\nCompetencies:\n1) A survey: x y.\n2) B model: x y.\n3) C maps: x y.", True, ""),
    ("star and bullet dots", "Domain: Ecology\n* A survey: x y.\n• B model: x y.\n* C maps: x y.", True, ""),
    (
        "curly quotes around domain and names",
        "Domain: “Ecology”\nCompetencies:\n- “A survey”: x y.\n- 'B model': x y.\n- \"C maps\": x y.",
        True,
        "",
    ),
    ("header in lower case", "Domain: Ecology\n\ncompetencies:\n" + items(3), True, ""),
    ("header missing", "Domain: Ecology\n" + items(3), True, ""),
    (
        "whitespace around everything",
        "\n\n   Domain:   Ecology   \n\n  Competencies:  \n  " + items(3) + "   \n\n",
        True,
        "",
    ),
    ("trailing Note paragraph", profile(3) + "\n\nNote: this profile only uses the abstracts.\nIt is short.", True, ""),
    (
        "trailing Explanation with bullets",
        profile(3) + "\n\nExplanation:\n- I picked the main topics.\n- Nothing else.",
        True,
        "",
    ),
    ("blank line then prose", profile(3) + "\n\nThese competencies reflect the researcher's main work.", True, ""),
    ("markdown headings", "## Domain: Ecology\n\n### Competencies\n" + items(3), True, ""),
    ("domain value on the next line", "**Domain:**\nEcology\n\n**Competencies:**\n" + items(3), True, ""),
    ("whole output in a code fence", "```\n" + profile(3) + "\n```", True, ""),
    ("preamble and fenced profile", "Here you go:\n```text\n" + profile(3) + "\n```\nHope it helps.", True, ""),
    ("one preamble line", "Here is the profile:\n\n" + profile(3), True, ""),
    ("loose list with blank lines between items", "Domain: Ecology\n\n" + items(3).replace("\n", "\n\n"), True, ""),
    ("plain list without bullets", "Domain: Ecology\nCompetencies:\n" + items(3, bullet=""), True, ""),
    (
        "dash as separator",
        "Domain: Ecology\n- A survey – counts birds.\n- B model - fits models.\n- C maps — draws maps.",
        True,
        "",
    ),
    ("list introduced by a sentence", "Domain: Ecology\n\nThe abstracts show these competencies:\n" + items(3), True, ""),
    ("realistic noisy small-model output", SMOLLM_STYLE, True, ""),
    # --- invalid
    ("empty text", "", False, "empty text"),
    ("whitespace only", "  \n\t\n ", False, "empty text"),
    ("prose only", "The researcher works on ecology and is very good at it.", False, "no 'Domain:' line"),
    ("one competency", profile(1), False, "1 competency; at least 3 are required"),
    ("two competencies", profile(2), False, "2 competencies; at least 3 are required"),
    ("nine competencies", profile(9), False, "9 competencies; at most 8 are allowed"),
    ("twenty competencies (the original's failure)", profile(20), False, "20 competencies; at most 8 are allowed"),
    (
        "empty description",
        "Domain: Ecology\n- A survey: x y.\n- B model: x y.\n- C maps:\n",
        False,
        "competency 3 ('C maps') has an empty description",
    ),
    ("empty name", "Domain: Ecology\n- : x y.\n- B model: x y.\n- C maps: x y.", False, "competency 1 has an empty name"),
    (
        "duplicate name up to case and punctuation",
        "Domain: Ecology\n- Field surveys: x y.\n- B model: x y.\n- field-surveys: z w.",
        False,
        "competency name 'Field surveys' appears twice",
    ),
    ("repetition loop: whole profile twice", profile(3) + "\n\n" + profile(3), False, "a second 'Domain:' line at line 8"),
    (
        "repetition loop: same line over and over",
        "Domain: Ecology\n" + "- Field surveys: Counts birds.\n" * 12,
        False,
        "12 competencies; at most 8 are allowed",
    ),
    (
        "repetition loop inside a description",
        "Domain: Ecology\n- A survey: x y.\n"
        "- B model: fits the model to the model to the model to the model.\n- C maps: z.",
        False,
        "competency 2 ('B model') description repeats itself ('the model to' 3 times)",
    ),
    ("code drift after the list", CODE_DRIFT, False, "contains code at line 8 ('```python')"),
    ("fenced profile followed by code drift", "```\n" + CODE_DRIFT + "\n```", False, "contains code at line 1 ('```')"),
    ("unclosed fence (truncated output)", "```\n" + profile(3), False, "contains code at line 1"),
    (
        "code drift inside the list",
        "Domain: Ecology\n- A survey: x y.\nimport numpy as np\n- B model: x y.\n- C maps: z w.",
        False,
        "contains code at line 3",
    ),
    (
        "junk description",
        "Domain: Ecology\n- A survey: x y.\n- B model: @@ ## 12 34 %%% ok\n- C maps: z.",
        False,
        "competency 2 ('B model') description is mostly not words (1 of 6 tokens are words)",
    ),
    ("junk domain", "Domain: 0x1F 0x2A ### ok\n" + items(3), False, "domain is mostly not words"),
    ("empty domain", 'Domain: ""\n' + items(3), False, "empty domain"),
    (
        "name too long",
        "Domain: Ecology\n- A survey: x.\n- B model: x.\n- " + "Long " * 20 + ": x.",
        False,
        f"competency 3 ('Long Long Long Long Long Long Long Long…') name is 99 characters; at most {MAX_NAME_CHARS}",
    ),
    (
        "description too long",
        "Domain: Ecology\n- A survey: x.\n- B model: x.\n- C maps: " + " ".join(f"word{i}x" for i in range(100)),
        False,
        f"description is 789 characters; at most {MAX_DESCRIPTION_CHARS} are allowed",
    ),
    (
        "prose between domain and list",
        "Domain: Ecology\nThe researcher studies birds in forests.\n\nCompetencies:\n" + items(3),
        False,
        "unexpected text before the competency list at line 2",
    ),
    (
        "list interrupted by prose and resumed",
        "Domain: Ecology\n- A survey: x.\n- B model: x.\n\nAnd also some more:\n\n- C maps: x.",
        False,
        "the competency list is interrupted by text at line 5",
    ),
    (
        "two preamble lines",
        "Hello!\nHere is the profile:\n" + profile(3),
        False,
        "2 lines of text before the 'Domain:' line",
    ),
    (
        "prompt template echoed",
        'Domain: "<short domain description>"\n\nCompetencies:\n' + items(3),
        False,
        "domain is the placeholder from the prompt",
    ),
    ("second competencies header", profile(3) + "\nCompetencies:\n" + items(2), False, "a second 'Competencies:' header"),
    ("domain but no list", "Domain: Ecology\n\n", False, "no competency list after the 'Domain:' line"),
]


@pytest.mark.parametrize(("text", "valid", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_table(text, valid, reason):
    parsed = parse_profile(text)
    assert parsed.valid is valid, parsed.reason
    if valid:
        assert parsed.reason == ""
        assert MIN_COMPETENCIES <= len(parsed.competencies) <= MAX_COMPETENCIES
    else:
        assert reason in parsed.reason


def test_table_is_big_and_mixed():
    assert len(CASES) >= 25
    assert sum(1 for c in CASES if c[2]) >= 10
    assert sum(1 for c in CASES if not c[2]) >= 15


@pytest.mark.parametrize("text", [c[1] for c in CASES if c[2]], ids=[c[0] for c in CASES if c[2]])
def test_round_trip(text):
    parsed = parse_profile(text)
    again = parse_profile(parsed.canonical_text())
    assert again == ParsedProfile(valid=True, domain=parsed.domain, competencies=parsed.competencies)
    assert again.canonical_text() == parsed.canonical_text()


def test_noise_is_removed_from_fields():
    parsed = parse_profile(SMOLLM_STYLE)
    assert parsed.domain == "Computational Genomics"
    assert [c.name for c in parsed.competencies] == [
        "Sequence Alignment",
        "Statistical Genetics",
        "High-Performance Computing",
    ]
    # The wrapped continuation line joins its description with one space.
    assert parsed.competencies[0].description == (
        "The abstracts describe new alignment algorithms for long reads and benchmark them against existing tools."
    )
    assert parsed.ignored == [
        "preamble: 'Sure! Here is the competency profile ba…'",
        "trailing text from line 14: 'I hope this helps! Let me know if you n…'",
    ]


def test_script_in_description_is_plain_text_kept_verbatim():
    text = (
        "Domain: Web security\n- XSS: Shows <script>alert('x')</script> payloads & filters.\n"
        "- B model: x y.\n- C maps: z."
    )
    parsed = parse_profile(text)
    assert parsed.valid, parsed.reason
    assert parsed.competencies[0].description == "Shows <script>alert('x')</script> payloads & filters."


def test_invalid_profile_keeps_what_was_parsed():
    parsed = parse_profile(profile(2))
    assert parsed.domain == "Computational biology"
    assert [c.name for c in parsed.competencies] == NAMES[:2]


def test_format_profile_canonical_text():
    text = format_profile("Ecology ", [Competency("Field  surveys", "Counts\nbirds."), Competency("B", "c")])
    assert text == 'Domain: "Ecology"\n\nCompetencies:\n- Field surveys: Counts birds.\n- B: c'


def test_format_profile_refuses_colon_in_name():
    with pytest.raises(ValueError, match="contains ':'"):
        format_profile("Ecology", [Competency("Stats: Bayesian", "x")])


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Machine Learning", "machine learning"),
        ("  machine-learning ", "machine learning"),
        ("**Machine_learning**:", "machine learning"),
        ("Ｍachine　learning", "machine learning"),  # full-width letters and space (NFKC)
    ],
)
def test_normalise_name(name, key):
    assert normalise_name(name) == key


def _p(domain: str, *pairs: tuple[str, str]) -> ParsedProfile:
    return ParsedProfile(True, domain, [Competency(n, d) for n, d in pairs])


def test_similarity_ignores_order_case_and_punctuation():
    a = _p("Ecology", ("Field surveys", "Counts birds."), ("Modelling", "Fits models."))
    b = _p("ecology", ("Modelling", "fits models"), ("Field-surveys", "counts birds"))
    assert profile_similarity(a, b) == 1.0
    assert is_near_duplicate(a, b)


def test_similarity_is_jaccard_of_word_sets():
    a = _p("Ecology", ("Surveys", "birds"))  # {ecology, surveys, birds}
    b = _p("Ecology", ("Surveys", "fish"))  # {ecology, surveys, fish}
    assert profile_similarity(a, b) == pytest.approx(2 / 4)
    assert not is_near_duplicate(a, b)
    assert is_near_duplicate(a, b, threshold=0.5)


def test_similarity_of_empty_profiles():
    assert profile_similarity(_p(""), _p("")) == 1.0
    assert profile_similarity(_p("Ecology"), _p("")) == 0.0


def test_align_competencies():
    a = _p("x", ("Machine learning", "1"), ("Bayesian statistics", "2"), ("Field work", "3"))
    b = _p("x", ("Statistics, Bayesian", "4"), ("Teaching", "5"), ("Machine-learning methods", "6"))
    rows = [(x and x.description, y and y.description) for x, y in align_competencies(a, b)]
    assert rows == [("1", "6"), ("2", "4"), ("3", None), (None, "5")]


def test_align_uses_each_competency_once_best_match_first():
    a = _p("x", ("Machine learning methods", "1"), ("Machine learning", "2"))
    b = _p("x", ("Machine learning", "3"))
    rows = [(x and x.description, y and y.description) for x, y in align_competencies(a, b)]
    assert rows == [("1", None), ("2", "3")]


def test_align_empty():
    assert align_competencies(_p("x"), _p("y")) == []
