import copy
import hashlib
import json

import pytest

from annotation.profiles import format as profile_format
from annotation.profiles.format import parse_profile
from annotation.prompts import (
    EXTRACTION_PROMPT_VERSION,
    JUDGE_PROMPT_VERSION,
    PROMPTS,
    build_extraction_messages,
    build_judge_messages,
    format_abstracts,
)
from annotation.judging.verdicts import parse_verdict

ABSTRACTS = [
    ("Deep learning for protein folding", "We train a network on 10,000 structures."),
    ("  Bayesian models of gene regulation ", "  We fit hierarchical models to RNA-seq data.\n"),
]
PROFILE = 'Domain: "Computational biology"\n\nCompetencies:\n- A: x.\n- B: y.\n- C: z.'
FEW_SHOT = [([("Bird counts", "We count birds.")], 'Domain: "Ecology"\n\nCompetencies:\n- Surveys: counts.')]


def digest(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()


def test_versions_are_registered():
    assert PROMPTS[EXTRACTION_PROMPT_VERSION] is PROMPTS["extract-v1"]
    assert PROMPTS[JUDGE_PROMPT_VERSION] is PROMPTS["judge-v1"]
    assert EXTRACTION_PROMPT_VERSION == "extract-v1"
    assert JUDGE_PROMPT_VERSION == "judge-v1"


def test_extraction_messages_shape():
    messages = build_extraction_messages(ABSTRACTS)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == (
        "Abstract 1: Deep learning for protein folding\nWe train a network on 10,000 structures.\n\n"
        "Abstract 2: Bayesian models of gene regulation\nWe fit hierarchical models to RNA-seq data."
    )
    system = messages[0]["content"]
    for phrase in ("abstracts", "one researcher", "Domain:", "Competencies:", "neutral", "only what the abstracts say"):
        assert phrase in system


def test_extraction_prompt_limits_match_the_validator():
    system = build_extraction_messages(ABSTRACTS)[0]["content"]
    assert f"between {profile_format.MIN_COMPETENCIES} and {profile_format.MAX_COMPETENCIES} competencies" in system


def test_the_format_shown_in_the_prompt_is_what_the_parser_accepts():
    system = build_extraction_messages(ABSTRACTS)[0]["content"]
    template = system.split("write nothing before or after it:\n\n", 1)[1]
    item = template.splitlines()[-1]
    items = "\n".join(
        item.replace("<Competency name>", name).replace("<one or two sentences on how the abstracts show it>", "Shown.")
        for name in ("Surveys", "Modelling", "Mapping")
    )
    filled = template.replace("<short domain description>", "Ecology").replace(item, items)
    assert parse_profile(filled).valid, parse_profile(filled).reason
    assert not parse_profile(template).valid  # the bare template is never a valid answer


def test_few_shot_turns_come_between_system_and_question():
    messages = build_extraction_messages(ABSTRACTS, few_shot=FEW_SHOT)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "Abstract 1: Bird counts\nWe count birds."
    assert messages[2]["content"] == FEW_SHOT[0][1]
    assert messages[3] == build_extraction_messages(ABSTRACTS)[1]


def test_builders_are_deterministic_and_do_not_touch_their_input():
    before = copy.deepcopy(ABSTRACTS)
    first = json.dumps(build_extraction_messages(ABSTRACTS, FEW_SHOT))
    second = json.dumps(build_extraction_messages(list(ABSTRACTS), tuple(FEW_SHOT)))
    assert first == second
    assert json.dumps(build_judge_messages(ABSTRACTS, PROFILE, "x")) == json.dumps(
        build_judge_messages(tuple(ABSTRACTS), PROFILE, "x")
    )
    assert ABSTRACTS == before


# A frozen version must never change: these digests were taken when the versions were written. If one of
# these fails, the prompt text changed — add a new version instead of editing an old one.
@pytest.mark.parametrize(
    ("version", "args", "expected"),
    [
        (
            "extract-v1",
            (ABSTRACTS, FEW_SHOT),
            "82767dd0ab6153b7171292bc2755aac95fe426c872066d5f67feff11f5c8c512",
        ),
        (
            "judge-v1",
            (ABSTRACTS, PROFILE, PROFILE.replace("C: z.", "D: w.")),
            "157f84693d70634e99c8066bcf04dcc4f09f3b162a4b3bf26a9a456a0465cbc8",
        ),
    ],
)
def test_frozen_versions_do_not_change(version, args, expected):
    assert digest(PROMPTS[version](*args)) == expected


def test_judge_messages_content():
    messages = build_judge_messages(ABSTRACTS, PROFILE, "Domain: Other\n- <b>bold</b>: x")
    assert [m["role"] for m in messages] == ["system", "user"]
    system, user = messages[0]["content"], messages[1]["content"]
    assert user.startswith("Abstracts:\n\nAbstract 1: Deep learning for protein folding\n")
    assert f"=== Profile A ===\n{PROFILE}\n=== End of Profile A ===" in user
    assert "=== Profile B ===\nDomain: Other\n- <b>bold</b>: x\n=== End of Profile B ===" in user
    assert user.index("Profile A") < user.index("Profile B")
    assert user.endswith("Which profile better reflects the competencies shown in the abstracts?")
    for criterion in ("Grounded", "Specific", "Domain", "between 3 and 8 competencies", "junk"):
        assert criterion in system
    assert system.endswith('{"reasoning": "<your reasoning>", "preferred": "A" | "B" | "tie"}')
    assert system.index("Reason through the criteria first") < system.index("ONLY this JSON object")


@pytest.mark.parametrize("preferred", ["A", "B", "tie"])
def test_the_answer_the_judge_prompt_asks_for_parses(preferred):
    system = build_judge_messages(ABSTRACTS, PROFILE, PROFILE)[0]["content"]
    shape = system.rsplit("\n", 1)[1]
    answer = shape.replace("<your reasoning>", "A is grounded.").replace('"A" | "B" | "tie"', f'"{preferred}"')
    assert parse_verdict(answer).preferred == preferred


def test_no_abstracts_is_an_error():
    with pytest.raises(ValueError, match="at least one abstract"):
        format_abstracts([])
    with pytest.raises(ValueError):
        build_judge_messages([], PROFILE, PROFILE)


def test_untitled_abstract_has_no_trailing_space():
    assert format_abstracts([("", "Text.")]) == "Abstract 1:\nText."
