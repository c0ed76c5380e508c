"""Versioned prompts for extraction and judging, as chat messages (``[{"role": ..., "content": ...}]``).

A version is frozen once used: a DPO row's prompt must be byte-identical to the one its profiles were
generated with, and verdicts compare only within a prompt version. A changed prompt is a new version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Abstracts = Sequence[tuple[str, str]]  # (title, text) pairs of one sample
FewShot = Sequence[tuple[Abstracts, str]]  # (abstracts, the profile text to answer with)
Messages = list[dict[str, str]]

EXTRACTION_PROMPT_VERSION = "extract-v1"
JUDGE_PROMPT_VERSION = "judge-v1"

# Frozen text of extract-v1. The limits are written out, not taken from profile_format, so that changing
# a validation constant cannot silently change an old prompt (a test keeps the two in step).
_EXTRACT_V1_SYSTEM = """\
You are an expert in analysing scientific literature. You will be given the abstracts of several \
scientific publications by one researcher. Describe the researcher's research domain and the \
competencies that these abstracts show.

Rules:
- Use only what the abstracts say. Do not add outside knowledge and do not guess.
- Write neutrally and factually. Do not praise the researcher.
- Give between 3 and 8 competencies. Each competency has a short name and one or two sentences on \
how the abstracts show it.
- Answer in exactly this format and write nothing before or after it:

Domain: "<short domain description>"

Competencies:
- <Competency name>: <one or two sentences on how the abstracts show it>"""

_JUDGE_V1_SYSTEM = """\
You are an impartial reviewer of competency profiles. A competency profile describes the research \
domain and the competencies of a researcher, extracted from the abstracts of their publications. You \
will be given the abstracts and two profiles, Profile A and Profile B.

Decide which profile better reflects the competencies shown in the abstracts. Criteria:
1. Grounded: every competency and description is supported by the abstracts; nothing is invented.
2. Specific: the competencies are specific to this researcher's work, not generic skills.
3. Domain: the domain describes the research area of the abstracts correctly.
4. Size: between 3 and 8 competencies, each with a name and a description of how the abstracts show it.
5. Clean: no junk, repetition, code or text outside the profile.

The order in which the profiles are shown, their length and their style must not influence you. \
Answer "tie" only if neither profile is better.

Reason through the criteria first, then give your verdict. Answer with ONLY this JSON object and \
nothing before or after it:
{"reasoning": "<your reasoning>", "preferred": "A" | "B" | "tie"}"""

_JUDGE_V1_QUESTION = "Which profile better reflects the competencies shown in the abstracts?"


def format_abstracts(abstracts: Abstracts) -> str:
    """ "Abstract 1: <title>\\n<text>", blocks separated by a blank line."""
    if not abstracts:
        raise ValueError("a prompt needs at least one abstract")
    blocks = [
        f"Abstract {i}: {title.strip()}".rstrip() + f"\n{text.strip()}"
        for i, (title, text) in enumerate(abstracts, start=1)
    ]
    return "\n\n".join(blocks)


def _extract_v1(abstracts: Abstracts, few_shot: FewShot = ()) -> Messages:
    messages = [{"role": "system", "content": _EXTRACT_V1_SYSTEM}]
    for example_abstracts, example_profile in few_shot:
        messages.append({"role": "user", "content": format_abstracts(example_abstracts)})
        messages.append({"role": "assistant", "content": example_profile.strip()})
    messages.append({"role": "user", "content": format_abstracts(abstracts)})
    return messages


def _judge_v1(abstracts: Abstracts, profile_a_text: str, profile_b_text: str) -> Messages:
    # Explicit begin/end lines keep a profile's own text (which may contain anything) inside its box.
    user = (
        f"Abstracts:\n\n{format_abstracts(abstracts)}\n\n"
        f"=== Profile A ===\n{profile_a_text.strip()}\n=== End of Profile A ===\n\n"
        f"=== Profile B ===\n{profile_b_text.strip()}\n=== End of Profile B ===\n\n"
        f"{_JUDGE_V1_QUESTION}"
    )
    return [{"role": "system", "content": _JUDGE_V1_SYSTEM}, {"role": "user", "content": user}]


PROMPTS: dict[str, Callable[..., Messages]] = {
    "extract-v1": _extract_v1,
    "judge-v1": _judge_v1,
}


def build_extraction_messages(abstracts: Abstracts, few_shot: FewShot = ()) -> Messages:
    """The current extraction prompt: system, few-shot user/assistant turns, then the abstracts."""
    return PROMPTS[EXTRACTION_PROMPT_VERSION](abstracts, few_shot)


def build_judge_messages(abstracts: Abstracts, profile_a_text: str, profile_b_text: str) -> Messages:
    """The current judge prompt: system with criteria and JSON format, user with abstracts and profiles."""
    return PROMPTS[JUDGE_PROMPT_VERSION](abstracts, profile_a_text, profile_b_text)
