"""Import profiles and preference labels made elsewhere (another tool, an earlier study), all-or-nothing.

Profiles, one JSON object a line:
    {"sample": "<sample name>", "generator": "<name>", "candidate": 0, "text": "Domain: ..."}
Votes and judge verdicts, one JSON object a line; "a" and "b" name two imported profiles of one sample:
    {"sample": "s", "a": {"generator": "g1", "candidate": 0}, "b": {"generator": "g2", "candidate": 0},
     "expert": "<username>", "choice": "a" | "b" | "tie" | "both_bad", "rationale": "..."}
    {"sample": "s", "a": {...}, "b": {...}, "judge": "<name>", "order": "ab" | "ba",
     "preferred": "a" | "b" | "tie", "reasoning": "..."}
"a"/"b" refer to the file's own a and b; CompX stores pairs canonically and translates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, transaction
from django.utils import timezone

from .importing import MAX_REPORTED_ERRORS, ImportFailed, Problem, _jsonl_records
from ..models import (
    Assignment, Backend, Campaign, CampaignItem, Choice, Comparison, Generator, Judge, JudgeVerdict, PairingSource,
    Preferred, Profile, Sample, Vote,
)
from ..profiles.store import mark_near_duplicates, parsed_fields
from ..roles import EXPERTS_GROUP

IMPORTED_PROMPT = "imported"


class RowError(Exception):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def _run(path: Path, handle_row: Callable[[dict], str]) -> dict[str, int]:
    """Apply handle_row to every record inside one transaction; roll everything back on any problem."""
    problems: list[Problem] = []
    outcomes: dict[str, int] = {}

    class Rollback(Exception):
        pass

    try:
        with transaction.atomic(), Path(path).open("rb") as handle:
            for line, record in _jsonl_records(handle, problems):
                try:
                    with transaction.atomic():
                        outcome = handle_row(record)
                except RowError as exc:
                    problems.append(Problem(line, exc.field, str(exc)))
                    continue
                except IntegrityError as exc:
                    problems.append(Problem(line, "", f"conflicts with stored data ({exc})"))
                    continue
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if not outcomes and not problems:
                problems.append(Problem(0, "", "the file holds no records"))
            if problems:
                raise Rollback
    except Rollback:
        raise ImportFailed(Path(path).name, problems[:MAX_REPORTED_ERRORS],
                           max(0, len(problems) - MAX_REPORTED_ERRORS))
    return outcomes


def _text(record: dict, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RowError(name, "missing" if value is None else "expected non-empty text")
    return value.strip()


def _choice(record: dict, name: str, allowed: list[str]) -> str:
    value = record.get(name)
    if value not in allowed:
        raise RowError(name, f"expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _sample(record: dict) -> Sample:
    name = _text(record, "sample")
    sample = Sample.objects.filter(name=name).first()
    if sample is None:
        raise RowError("sample", f"no sample named {name!r}; import its documents first")
    return sample


def _candidate(record: dict, name: str = "candidate") -> int:
    value = record.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RowError(name, f"expected a whole number ≥ 0, got {value!r}")
    return value


def _import_profile(record: dict) -> str:
    sample = _sample(record)
    text = _text(record, "text")
    generator, _ = Generator.objects.get_or_create(
        name=_text(record, "generator"), defaults={"backend": Backend.IMPORTED, "model": "imported"}
    )
    index = _candidate(record)
    existing = Profile.objects.filter(sample=sample, generator=generator, candidate_index=index).first()
    if existing:
        if existing.raw_text != text:
            raise RowError("text", f"profile {generator.name} #{index} of {sample.name} exists with other text")
        return "unchanged"
    Profile.objects.create(sample=sample, generator=generator, candidate_index=index, raw_text=text,
                           prompt_version=IMPORTED_PROMPT, **parsed_fields(text))
    mark_near_duplicates(sample.pk)
    return "created"


def import_profiles(path: Path | str) -> dict[str, int]:
    return _run(Path(path), _import_profile)


def _profile_ref(record: dict, side: str, sample: Sample) -> Profile:
    ref = record.get(side)
    if not isinstance(ref, dict):
        raise RowError(side, 'expected {"generator": ..., "candidate": ...}')
    profile = Profile.objects.filter(sample=sample, generator__name=ref.get("generator"),
                                     candidate_index=_candidate(ref)).first()
    if profile is None:
        raise RowError(side, f"no profile {ref.get('generator')!r} #{ref.get('candidate', 0)} of {sample.name!r}")
    return profile


def _comparison(record: dict) -> tuple[Comparison, bool]:
    """The stored comparison for the record's pair, and whether the file's a is the canonical b."""
    sample = _sample(record)
    first, second = _profile_ref(record, "a", sample), _profile_ref(record, "b", sample)
    if first.pk == second.pk:
        raise RowError("b", "a and b are the same profile")
    a, b = Comparison.canonical(first, second)
    comparison, _ = Comparison.objects.get_or_create(
        profile_a=a, profile_b=b, defaults={"sample": sample, "source": PairingSource.IMPORTED}
    )
    return comparison, a.pk != first.pk


def _swap(label: str, swapped: bool) -> str:
    return {"a": "b", "b": "a"}.get(label, label) if swapped else label


def _import_vote(record: dict, campaign_name: str) -> str:
    if ("expert" in record) == ("judge" in record):
        raise RowError("expert", "a row has either 'expert' or 'judge'")
    comparison, swapped = _comparison(record)
    if "judge" in record:
        return _import_verdict(record, comparison, swapped)
    if not campaign_name:
        raise RowError("expert", "expert votes need --campaign")
    campaign = Campaign.objects.get_or_create(name=campaign_name)[0]
    choice = _swap(_choice(record, "choice", Choice.values), swapped)
    expert = _expert(_text(record, "expert"))
    item, _ = CampaignItem.objects.get_or_create(campaign=campaign, comparison=comparison)
    assignment, created = Assignment.objects.get_or_create(item=item, expert=expert)
    if created:
        CampaignItem.objects.filter(pk=item.pk).update(assignment_count=item.assignments.count())
    campaign.experts.add(expert)
    existing = Vote.objects.filter(expert=expert, comparison=comparison).first()
    if existing:
        if existing.choice != choice:
            raise RowError("choice", f"{expert.username} already voted {existing.choice!r} on this pair")
        return "unchanged"
    Vote.objects.create(assignment=assignment, expert=expert, comparison=comparison, campaign=campaign,
                        choice=choice, first_choice=choice, rationale=str(record.get("rationale") or ""))
    Assignment.objects.filter(pk=assignment.pk).update(voted_at=timezone.now())  # answered, as a vote in the app
    return "votes"


def _import_verdict(record: dict, comparison: Comparison, swapped: bool) -> str:
    judge, _ = Judge.objects.get_or_create(name=_text(record, "judge"), defaults={"model": "imported"})
    order = _choice(record, "order", ["ab", "ba"])
    canonical_order = {"ab": "ba", "ba": "ab"}[order] if swapped else order
    preferred = _swap(_choice(record, "preferred", Preferred.values), swapped)
    existing = JudgeVerdict.objects.filter(comparison=comparison, judge=judge, order=canonical_order).first()
    if existing:
        if existing.preferred != preferred:
            raise RowError("preferred", f"judge {judge.name} already said {existing.preferred!r} in this order")
        return "unchanged"
    JudgeVerdict.objects.create(comparison=comparison, judge=judge, order=canonical_order, preferred=preferred,
                                is_valid=True, reasoning=str(record.get("reasoning") or ""),
                                raw_text=str(record.get("reasoning") or ""), prompt_version=IMPORTED_PROMPT)
    return "verdicts"


def _expert(username: str):
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        # Imported people can be analysed but cannot log in until an admin sets a password.
        user.set_unusable_password()
        user.save()
    user.groups.add(Group.objects.get_or_create(name=EXPERTS_GROUP)[0])
    return user


def import_votes(path: Path | str, campaign_name: str = "") -> dict[str, int]:
    return _run(Path(path), lambda record: _import_vote(record, campaign_name))
