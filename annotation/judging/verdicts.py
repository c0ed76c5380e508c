"""Strict parsing of judge output, and turning per-order verdicts into canonical ones.

A judge answers in *presentation* terms ("A" is whichever profile was shown first); verdicts are stored in
*canonical* terms ("a" is the comparison's ``profile_a``). Order "ab" means canonical a was shown first,
order "ba" that b was, so there "A" means b.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PRESENTATION_LABELS = ("A", "B", "tie")
CANONICAL_LABELS = ("a", "b", "tie")
INCONSISTENT = "inconsistent"
INVALID = "invalid"
NO_CONSENSUS = "no_consensus"

_FENCE = re.compile(r"```")
_FENCED_BLOCK = re.compile(r"```[ \t]*(?:[A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    preferred: str | None  # "A" | "B" | "tie" in presentation terms; None when invalid
    reasoning: str = ""
    error: str = ""  # empty when valid

    @property
    def valid(self) -> bool:
        return self.preferred is not None


class _Invalid(Exception):
    pass


def parse_verdict(text: str | None) -> Verdict:
    """Parse one judge output; never raises on bad input.

    Valid only when the output is exactly one JSON object (the whole text, or the content of exactly one
    fenced code block, prose around it allowed) with a ``preferred`` of "A", "B" or "tie", matched
    case-insensitively; anything else is invalid with a precise ``error``, stored but never counted. A
    ``reasoning``, when present, must be a string and is kept verbatim (escaping is the template's job). Extra
    keys are allowed; a duplicated key is not, since JSON parsers silently keep the last one.
    """
    try:
        obj = _the_one_object(text or "")
        return _verdict_from(obj)
    except _Invalid as problem:
        return Verdict(preferred=None, error=str(problem))


def _the_one_object(text: str) -> object:
    if not text.strip():
        raise _Invalid("empty output")
    whole = _try_json(text)  # first, so a fence quoted inside a valid object's strings is just text
    if whole is not _NOT_JSON:
        return whole
    fences = len(_FENCE.findall(text))
    if fences % 2:
        raise _Invalid("unclosed code fence (truncated output?)")
    if fences > 2:
        raise _Invalid(f"{fences // 2} fenced blocks; expected exactly one")
    if fences == 0:
        _explain_not_one_object(text, where="")
    block = _FENCED_BLOCK.search(text)
    outside = text[: block.start()] + text[block.end() :]
    if _count_objects(outside):
        raise _Invalid("a JSON object outside the fenced block as well; expected exactly one")
    inside = _try_json(block.group(1))
    if inside is _NOT_JSON:
        _explain_not_one_object(block.group(1), where=" in the fenced block")
    return inside


_NOT_JSON = object()


def _try_json(text: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError:
        return _NOT_JSON


def _explain_not_one_object(text: str, where: str) -> None:
    count = _count_objects(text)
    if count > 1:
        raise _Invalid(f"{count} JSON objects{where}; expected exactly one")
    if count == 1:
        raise _Invalid(f"text around the JSON object{where}; expected only the object or one ```json block")
    start = text.find("{")
    if start == -1:
        raise _Invalid(f"no JSON object{where}")
    try:
        json.JSONDecoder(object_pairs_hook=_no_duplicate_keys).raw_decode(text, start)
    except json.JSONDecodeError as error:
        raise _Invalid(f"malformed or truncated JSON{where} ({error})") from None
    raise _Invalid(f"malformed JSON{where}")  # unreachable in practice: a decodable object counts above


def _count_objects(text: str) -> int:
    """How many complete JSON objects the text holds at top level, scanning left to right.

    Returns 0 as soon as an opening brace does not start a valid object: the text is then broken JSON,
    not several objects.
    """
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
    count, position = 0, text.find("{")
    while position != -1:
        try:
            _, end = decoder.raw_decode(text, position)
        except (json.JSONDecodeError, _Invalid):
            return count
        count += 1
        position = text.find("{", end)
    return count


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = Counter(key for key, _ in pairs)
    duplicated = [key for key, times in keys.items() if times > 1]
    if duplicated:
        raise _Invalid(f"duplicate key {duplicated[0]!r} in the JSON object")
    return dict(pairs)


def _verdict_from(obj: object) -> Verdict:
    if not isinstance(obj, dict):
        raise _Invalid(f"expected a JSON object, got {_json_type(obj)}")
    if "preferred" not in obj:
        raise _Invalid("missing 'preferred'")
    preferred = obj["preferred"]
    label = _presentation_label(preferred)
    if label is None:
        raise _Invalid(f"'preferred' must be \"A\", \"B\" or \"tie\", got {json.dumps(preferred)}")
    reasoning = obj.get("reasoning", "")
    if not isinstance(reasoning, str):
        raise _Invalid(f"'reasoning' must be a string, got {_json_type(reasoning)}")
    return Verdict(preferred=label, reasoning=reasoning)


def _presentation_label(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return {label.lower(): label for label in PRESENTATION_LABELS}.get(value.lower())


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def to_canonical(preferred: str | None, order: str) -> str | None:
    """Presentation label ("A"/"B"/"tie") → canonical ("a"/"b"/"tie"); None stays None.

    ``order`` is "ab" (canonical a was shown first, as "A") or "ba" (canonical b was shown first).
    """
    if order not in ("ab", "ba"):
        raise ValueError(f"order must be 'ab' or 'ba', got {order!r}")
    if preferred is None:
        return None
    if preferred not in PRESENTATION_LABELS:
        raise ValueError(f"not a presentation label: {preferred!r}")
    if preferred == "tie":
        return "tie"
    shown_first, shown_second = ("a", "b") if order == "ab" else ("b", "a")
    return shown_first if preferred == "A" else shown_second


def combine_canonical(ab: str | None, ba: str | None) -> str:
    """Combine the canonical verdicts of the two orders into one.

    Both valid and equal → that label ("a", "b" or "tie"). Any disagreement → "inconsistent", including a
    decisive verdict in one order and "tie" in the other: a preference that does not survive swapping the
    order is not a win. Either missing (invalid output) → "invalid".
    """
    for label in (ab, ba):
        if label is not None and label not in CANONICAL_LABELS:
            raise ValueError(f"not a canonical label: {label!r}")
    if ab is None or ba is None:
        return INVALID
    return ab if ab == ba else INCONSISTENT


def combine_asked(ab: str | None, ba: str | None, asked: int) -> str:
    """``combine_canonical`` for a judge that may have been asked one order only.

    ``asked``: how many orders were asked (verdicts stored, valid or not). Asked once, the verdict is that
    order's label: a *one-order* verdict (an imported study's, or a judge set to judge one order to save cost),
    which counts, though whether it would flip with the order is not measured. Asked in both orders, see
    ``combine_canonical``: a valid answer in one order and an invalid one in the other stays "invalid".
    """
    if asked == 1:
        label = ab if ab is not None else ba
        return label if label in CANONICAL_LABELS else INVALID
    return combine_canonical(ab, ba)


def combine_orders(first: str | None, second: str | None) -> str:
    """Combine one judge's two presentation-order verdicts into a canonical one.

    ``first``: the verdict when the comparison's canonical a was shown first as "A" (order "ab").
    ``second``: the verdict when canonical b was shown first as "A" (order "ba"), so there "A" means b.
    Returns "a", "b", "tie", "inconsistent" or "invalid" (see ``combine_canonical``).
    Example: first="A", second="B" → both name a → "a"; first="A", second="A" → the judge picked whatever
    was shown first → "inconsistent".
    """
    return combine_canonical(to_canonical(first, "ab"), to_canonical(second, "ba"))


def panel_consensus(verdicts: Iterable[str], threshold: float) -> str:
    """The panel's verdict from its judges' combined verdicts.

    "invalid" verdicts are not votes. Every other label (including "inconsistent") is a vote, and wins if
    its share of the votes is at least ``threshold``: 1.0 means unanimous, just over 0.5 a simple
    majority. Thresholds of 0.5 or less could crown two labels at once and are refused. No votes, or no
    label reaching the threshold → "no_consensus".
    """
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0.5, 1], got {threshold}")
    votes = Counter(v for v in verdicts if v != INVALID)
    unknown = set(votes) - {*CANONICAL_LABELS, INCONSISTENT}
    if unknown:
        raise ValueError(f"unknown verdict labels: {sorted(unknown)}")
    total = sum(votes.values())
    if total == 0:
        return NO_CONSENSUS
    label, count = votes.most_common(1)[0]
    # The small tolerance keeps e.g. 2 of 3 votes at threshold 2/3 a pass despite float rounding.
    return label if count / total >= threshold - 1e-9 else NO_CONSENSUS
