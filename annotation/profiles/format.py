"""Parse, validate, format and compare competency profiles (plain Python, no Django).

The format (SPEC, "Profile format")::

    Domain: "<short domain description>"

    Competencies:
    - <Competency name>: <one or two sentences on how the abstracts show it>
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

MIN_COMPETENCIES = 3
MAX_COMPETENCIES = 8
MAX_DOMAIN_CHARS = 150
MAX_NAME_CHARS = 80
# "One or two sentences": generous for two long sentences, short enough to stop rambling and loops.
MAX_DESCRIPTION_CHARS = 500
# Below this share of word-like tokens a field is junk (symbol soup, numbers, broken encodings).
MIN_WORD_SHARE = 0.5
# A word trigram seen this often inside one description is a generation loop, not prose.
MAX_TRIGRAM_REPEATS = 3
# Fuzzy name match for align_competencies (difflib ratio on normalised names).
ALIGN_THRESHOLD = 0.75

_DOMAIN_LINE = re.compile(r"^#*\s*domain\s*:\s*(.*)$", re.IGNORECASE)
_COMPETENCIES_HEADER = re.compile(r"^#*\s*(?:key\s+)?competenc(?:y|ies)\s*:?\s*$", re.IGNORECASE)
_ITEM_MARKER = re.compile(r"^(?:[-*•+–]|\(?\d{1,2}[.)])\s+")
_TRAILING_HEADER = re.compile(
    r"^#*\s*(?:notes?|explanation|summary|in summary|overall|conclusion|justification|rationale|"
    r"reasoning|comments?|disclaimer|remarks?)\s*[:,]|^note that\b",
    re.IGNORECASE,
)
# Only unambiguous code: prose in a description ("import substitution", "for example in") must not match.
_CODE_LINE = re.compile(
    r"^\s*(?:```|def \w+\s*\(|class \w+\s*[(:]|import [\w.]+(?: as \w+)?\s*$|from [\w.]+ import \w|"
    r"#include\b|public (?:static|class)\b|function \w*\s*\(|console\.\w+\(|print\(|if __name__\b|"
    r"<\?php|[{}]\s*$)"
)
# "<Competency name>" echoed from the prompt's format; a tag such as "<script>" has no space and is text.
_PLACEHOLDER = re.compile(r"<[^<>]+\s[^<>]+>")
_DASH_SEPARATOR = re.compile(r"\s+[-–—]\s+")
_WORD = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}


@dataclass(frozen=True)
class Competency:
    name: str
    description: str


@dataclass
class ParsedProfile:
    valid: bool
    domain: str = ""
    competencies: list[Competency] = field(default_factory=list)
    # Empty when valid; otherwise the first problem found, in words, and its kind (a key of REASON_KINDS).
    reason: str = ""
    reason_kind: str = ""
    # Noise that was dropped (a preamble line, a trailing note), so an admin can see what was cut.
    ignored: list[str] = field(default_factory=list)

    def canonical_text(self) -> str:
        return format_profile(self.domain, self.competencies)


class _Invalid(Exception):
    def __init__(self, message: str, kind: str = "structure"):
        super().__init__(message)
        self.kind = kind


# Why profiles are invalid, as the end of "N profiles …", for import summaries and figures.
REASON_KINDS = {
    "too_many": f"have more than {MAX_COMPETENCIES} competencies",
    "too_few": f"have fewer than {MIN_COMPETENCIES} competencies",
    "name_too_long": f"have a competency name over {MAX_NAME_CHARS} characters",
    "description_too_long": f"have a description over {MAX_DESCRIPTION_CHARS} characters",
    "domain_too_long": f"have a domain over {MAX_DOMAIN_CHARS} characters",
    "no_domain": "have no 'Domain:' line",
    "no_list": "have no competency list",
    "empty_field": "have an empty domain, competency name or description",
    "duplicate_names": "name a competency twice",
    "repeated": "repeat their own output",
    "structure": "have text the profile format does not allow",
    "code": "contain code",
    "placeholder": "echo the prompt's placeholder",
    "not_words": "have a field that is mostly not words",
    "loop": "have a description that repeats itself",
    "empty": "are empty",
    "cut_off": "were cut off at the token limit",
}


@dataclass
class _Item:
    name: str
    parts: list[str]


def parse_profile(text: str) -> ParsedProfile:
    """Parse and validate one profile; never raises on bad input.

    Strict about structure (one domain, one list of 3–8 named and described competencies, nothing else it
    cannot safely cut) and tolerant of the harmless noise small models add: markdown markers, numbered or
    ``*``/``•`` bullets, quotes, a missing or differently cased "Competencies:" header, one preamble line, a
    whole-output code fence, wrapped descriptions, trailing notes. A rejected text's ``reason`` says why in
    words an admin can act on.
    """
    result = ParsedProfile(valid=False)
    try:
        _parse_into(text or "", result)
        _validate(result)
    except _Invalid as problem:
        result.reason = str(problem)
        result.reason_kind = problem.kind
        return result
    result.valid = True
    return result


def _parse_into(text: str, result: ParsedProfile) -> None:
    if not text.strip():
        raise _Invalid("empty text", "empty")
    lines = _unwrap_code_fence(text.strip().splitlines())
    for number, line in enumerate(lines, start=1):
        if _CODE_LINE.match(line):
            raise _Invalid(f"contains code at line {number} ({_quote(line.strip())})", "code")
    cleaned = [_clean_line(line) for line in lines]

    domain_at = [i for i, line in enumerate(cleaned) if _DOMAIN_LINE.match(line)]
    if not domain_at:
        raise _Invalid("no 'Domain:' line", "no_domain")
    if len(domain_at) > 1:
        raise _Invalid(f"a second 'Domain:' line at line {domain_at[1] + 1} (repeated output?)", "repeated")
    start = domain_at[0]
    preamble = [line for line in cleaned[:start] if line]
    if len(preamble) > 1:
        raise _Invalid(f"{len(preamble)} lines of text before the 'Domain:' line")
    result.ignored += [f"preamble: {_quote(line)}" for line in preamble]

    domain = _DOMAIN_LINE.match(cleaned[start]).group(1)
    rest = cleaned[start + 1 :]
    if not domain.strip():
        # "**Domain:**" on its own line with the value on the next one.
        nxt = next((i for i, line in enumerate(rest) if line), None)
        if nxt is not None and not _COMPETENCIES_HEADER.match(rest[nxt]) and not _ITEM_MARKER.match(rest[nxt]):
            domain, rest = rest[nxt], rest[nxt + 1 :]
    result.domain = _strip_wrappers(domain)
    if not result.domain:
        raise _Invalid("empty domain", "empty_field")

    items = _parse_list(rest, first_line_number=len(cleaned) - len(rest) + 1, ignored=result.ignored)
    result.competencies = [Competency(_strip_wrappers(it.name), " ".join(" ".join(it.parts).split())) for it in items]


def _parse_list(lines: list[str], first_line_number: int, ignored: list[str]) -> list[_Item]:
    items: list[_Item] = []
    marked: bool | None = None  # set by the first item: bullets/numbers, or bare "Name: description" lines
    seen_header = False
    after_blank = False
    for offset, line in enumerate(lines):
        number = first_line_number + offset
        if not line:
            after_blank = True
            continue
        if _COMPETENCIES_HEADER.match(line):
            if seen_header or items:
                raise _Invalid(f"a second 'Competencies:' header at line {number} (repeated output?)", "repeated")
            seen_header = True
            after_blank = False
            continue
        if _TRAILING_HEADER.match(line):
            ignored.append(f"trailing section from line {number}: {_quote(line)}")
            break
        if not items and _is_list_intro(line, lines[offset + 1 :]):
            ignored.append(f"list introduction at line {number}: {_quote(line)}")
            continue
        item = _item_start(line, marked)
        if item is not None:
            if marked is None:
                marked = bool(_ITEM_MARKER.match(line))
            items.append(item)
        elif items and not after_blank:
            items[-1].parts.append(line)  # a description wrapped onto the next line
        elif items:
            if _list_resumes(lines[offset + 1 :], marked):
                raise _Invalid(f"the competency list is interrupted by text at line {number} ({_quote(line)})")
            ignored.append(f"trailing text from line {number}: {_quote(line)}")
            break
        else:
            raise _Invalid(f"unexpected text before the competency list at line {number} ({_quote(line)})")
        after_blank = False
    if not items:
        raise _Invalid("no competency list after the 'Domain:' line", "no_list")
    return items


def _is_list_intro(line: str, following: list[str]) -> bool:
    """ "The abstracts show these competencies:" before a bulleted list is a header, not an item."""
    upcoming = next((later for later in following if later), "")
    return not _ITEM_MARKER.match(line) and line.endswith(":") and bool(_ITEM_MARKER.match(upcoming))


def _list_resumes(following: list[str], marked: bool | None) -> bool:
    for line in following:
        if _TRAILING_HEADER.match(line):
            return False
        if line and _item_start(line, marked):
            return True
    return False


def _item_start(line: str, marked: bool | None) -> _Item | None:
    marker = _ITEM_MARKER.match(line)
    if marker:
        return _split_item(line[marker.end() :])
    if marked is not True and ":" in line:
        name, _, description = line.partition(":")
        if name.strip() and len(name) <= MAX_NAME_CHARS:
            return _Item(name, [description])
    return None


def _split_item(body: str) -> _Item:
    if ":" in body:
        name, _, description = body.partition(":")
        return _Item(name, [description])
    dash = _DASH_SEPARATOR.search(body)
    if dash:
        return _Item(body[: dash.start()], [body[dash.end() :]])
    return _Item(body, [])  # the description may follow on the next line


def _validate(profile: ParsedProfile) -> None:
    _check_text("domain", profile.domain, MAX_DOMAIN_CHARS, "domain")
    count = len(profile.competencies)
    if count < MIN_COMPETENCIES:
        raise _Invalid(f"{_plural(count, 'competency', 'competencies')}; at least {MIN_COMPETENCIES} are required",
                       "too_few")
    if count > MAX_COMPETENCIES:
        raise _Invalid(f"{count} competencies; at most {MAX_COMPETENCIES} are allowed", "too_many")
    for number, competency in enumerate(profile.competencies, start=1):
        if not competency.name:
            raise _Invalid(f"competency {number} has an empty name", "empty_field")
        label = f"competency {number} ({_quote(competency.name)})"
        if not competency.description:
            raise _Invalid(f"{label} has an empty description", "empty_field")
        _check_text(f"{label} name", competency.name, MAX_NAME_CHARS, "name")
        _check_text(f"{label} description", competency.description, MAX_DESCRIPTION_CHARS, "description")
        _check_loop(label, competency.description)
    names = Counter(normalise_name(c.name) for c in profile.competencies)
    for competency in profile.competencies:
        times = names[normalise_name(competency.name)]
        if times > 1:
            said = "twice" if times == 2 else f"{times} times"
            raise _Invalid(f"competency name {_quote(competency.name)} appears {said}", "duplicate_names")


def _check_text(what: str, text: str, max_chars: int, field: str) -> None:
    if _PLACEHOLDER.fullmatch(text):
        raise _Invalid(f"{what} is the placeholder from the prompt ({_quote(text)})", "placeholder")
    if len(text) > max_chars:
        raise _Invalid(f"{what} is {len(text)} characters; at most {max_chars} are allowed", f"{field}_too_long")
    tokens = text.split()
    words = sum(1 for token in tokens if _WORD.fullmatch(_strip_punctuation(token)))
    if tokens and words / len(tokens) < MIN_WORD_SHARE:
        raise _Invalid(f"{what} is mostly not words ({words} of {len(tokens)} tokens are words)", "not_words")


def _check_loop(label: str, description: str) -> None:
    words = _WORD.findall(description.lower())
    trigrams = Counter(zip(words, words[1:], words[2:]))
    if trigrams:
        trigram, times = trigrams.most_common(1)[0]
        if times >= MAX_TRIGRAM_REPEATS:
            raise _Invalid(f"{label} description repeats itself ({_quote(' '.join(trigram))} {times} times)", "loop")


def format_profile(domain: str, competencies: list[Competency]) -> str:
    """The canonical text of a profile; ``parse_profile(format_profile(d, cs))`` gives back d and cs.

    Whitespace inside each field is collapsed to single spaces (the parser does the same). A name with a
    colon cannot be written unambiguously, so it is refused.
    """
    lines = [f'Domain: "{_one_line(domain)}"', "", "Competencies:"]
    for competency in competencies:
        if ":" in competency.name:
            raise ValueError(f"competency name {competency.name!r} contains ':'")
        lines.append(f"- {_one_line(competency.name)}: {_one_line(competency.description)}")
    return "\n".join(lines)


def normalise_name(name: str) -> str:
    """Case-, punctuation- and whitespace-insensitive key: "Machine-Learning " → "machine learning"."""
    text = unicodedata.normalize("NFKC", name).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def profile_similarity(a: ParsedProfile, b: ParsedProfile) -> float:
    """Jaccard similarity (0…1) of the sets of normalised words in domain, names and descriptions.

    Sets rather than difflib: candidates of one sample often list the same competencies in a different
    order, and a sequence matcher would call those different. Two profiles with no words at all are
    identical (1.0).
    """
    words_a, words_b = _profile_words(a), _profile_words(b)
    if not words_a and not words_b:
        return 1.0
    return len(words_a & words_b) / len(words_a | words_b)


def is_near_duplicate(a: ParsedProfile, b: ParsedProfile, threshold: float = 0.9) -> bool:
    return profile_similarity(a, b) >= threshold


@lru_cache(maxsize=4096)
def _similarity(na: str, nb: str) -> float:
    """difflib ratio of normalised names, word order ignored ("Statistics, Bayesian" = "Bayesian statistics").

    Cached: a review screen scores every name of one profile against every name of the other, and each profile
    comes back in several pairs and before several experts.
    """
    in_order = difflib.SequenceMatcher(None, na, nb).ratio()
    sorted_a, sorted_b = " ".join(sorted(na.split())), " ".join(sorted(nb.split()))
    return max(in_order, difflib.SequenceMatcher(None, sorted_a, sorted_b).ratio())


def _similarity_at_least(na: str, nb: str, threshold: float) -> float:
    """``_similarity`` when it reaches ``threshold``, else 0.

    Sorting a name's words keeps its letters, so difflib's cheap letter-count bound holds for both ratios:
    most pairs of unrelated names fail it and never run the matcher.
    """
    if na == nb:
        return 1.0
    bound = difflib.SequenceMatcher(None, na, nb)
    if bound.real_quick_ratio() < threshold or bound.quick_ratio() < threshold:
        return 0.0
    score = _similarity(na, nb)
    return score if score >= threshold else 0.0


def align_competencies(
    a: ParsedProfile, b: ParsedProfile, threshold: float = ALIGN_THRESHOLD
) -> list[tuple[Competency | None, Competency | None]]:
    """Pair the competencies two profiles share, for side-by-side review.

    Greedy on name similarity, best match first (ties: earlier in A, then earlier in B), so each
    competency is used once. Result: A's competencies in A's order, each with its match in B or None,
    then B's unmatched ones in B's order with None on the left.
    """
    names_a = [normalise_name(ca.name) for ca in a.competencies]
    names_b = [normalise_name(cb.name) for cb in b.competencies]
    scored = sorted(
        (-score, i, j)
        for i, na in enumerate(names_a)
        for j, nb in enumerate(names_b)
        if (score := _similarity_at_least(na, nb, threshold))
    )
    match_of_a: dict[int, int] = {}
    used_b: set[int] = set()
    for _, i, j in scored:
        if i not in match_of_a and j not in used_b:
            match_of_a[i] = j
            used_b.add(j)
    rows: list[tuple[Competency | None, Competency | None]] = [
        (ca, b.competencies[match_of_a[i]] if i in match_of_a else None) for i, ca in enumerate(a.competencies)
    ]
    rows += [(None, cb) for j, cb in enumerate(b.competencies) if j not in used_b]
    return rows


def _profile_words(profile: ParsedProfile) -> set[str]:
    fields = [profile.domain] + [f"{c.name} {c.description}" for c in profile.competencies]
    return set(normalise_name(" ".join(fields)).split())


def _unwrap_code_fence(lines: list[str]) -> list[str]:
    """A single fence pair around the profile is noise; blank it so line numbers stay true.

    Any other fence is code drift and is reported by the code check.
    """
    fences = [i for i, line in enumerate(lines) if line.strip().startswith("```")]
    domain = next((i for i, line in enumerate(lines) if _DOMAIN_LINE.match(_clean_line(line))), None)
    if len(fences) == 2 and domain is not None and fences[0] < domain < fences[1]:
        return [line if i not in fences else "" for i, line in enumerate(lines)]
    return lines


def _clean_line(line: str) -> str:
    return line.replace("**", "").strip()


def _strip_wrappers(text: str) -> str:
    """Remove quotes, italics and trailing colons wrapped around a whole name or domain."""
    text = " ".join(text.split())
    while True:
        before = text
        text = text.rstrip(":").strip()
        if len(text) >= 2 and text[0] in "*_" and text[-1] == text[0]:
            text = text[1:-1].strip()
        if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        if text == before:
            return text


def _strip_punctuation(token: str) -> str:
    return re.sub(r"^[\W_]+|[\W_]+$", "", token)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _quote(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"
