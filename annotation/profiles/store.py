"""Storing candidate profiles: raw text always kept, parsed fields validated, near-duplicates marked."""

from __future__ import annotations

from ..models import Profile
from .format import Competency, ParsedProfile, is_near_duplicate, parse_profile


def parsed_fields(raw_text: str, cut_off_at: int | None = None) -> dict:
    """The Profile fields that come from parsing raw model output.

    ``cut_off_at``: the token limit that stopped the model. Such a text may still parse, but its last
    competency is unfinished, so it is not a profile the model gave.
    """
    return fields_of(parse_stored(raw_text, cut_off_at))


def parse_stored(raw_text: str, cut_off_at: int | None = None) -> ParsedProfile:
    parsed = parse_profile(raw_text)
    if parsed.valid and cut_off_at is not None:
        parsed = ParsedProfile(valid=False, reason=f"cut off at the token limit ({cut_off_at} tokens) before the "
                                                   "answer ended; raise the generator's max new tokens",
                               reason_kind="cut_off")
    return parsed


def fields_of(parsed: ParsedProfile) -> dict:
    return {
        "domain": parsed.domain if parsed.valid else "",
        "competencies": [{"name": c.name, "description": c.description} for c in parsed.competencies]
        if parsed.valid else [],
        "is_valid": parsed.valid,
        "invalid_reason": parsed.reason,
    }


def as_parsed(profile: Profile) -> ParsedProfile:
    competencies = [Competency(c["name"], c["description"]) for c in profile.competencies]
    return ParsedProfile(valid=profile.is_valid, domain=profile.domain, competencies=competencies)


def mark_near_duplicates(sample_id: int) -> int:
    """Mark each valid profile that nearly repeats an earlier one of its sample; such profiles are never paired."""
    kept: list[Profile] = []
    marked = 0
    for profile in Profile.objects.filter(sample_id=sample_id, is_valid=True).order_by("id"):
        original = next((k for k in kept if is_near_duplicate(as_parsed(k), as_parsed(profile))), None)
        if original is None:
            kept.append(profile)
            if profile.duplicate_of_id:
                Profile.objects.filter(pk=profile.pk).update(duplicate_of=None)
        elif profile.duplicate_of_id != original.pk:
            Profile.objects.filter(pk=profile.pk).update(duplicate_of=original)
            marked += 1
    return marked
