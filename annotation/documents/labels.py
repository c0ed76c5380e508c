"""Import profiles and preference labels made elsewhere (another tool, an earlier study): all-or-nothing and
idempotent like the document import. The file formats are in the README ("Profiles and preference labels made
elsewhere"); a file's "a" and "b" are translated to CompX's canonical pair; knockout trees have their own
format (``annotation.documents.tournaments``). What a file brings in is counted and said: profiles stored as
invalid and why, labels on pairs with an invalid profile, names that had to become usernames.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.db import IntegrityError, transaction
from django.utils import timezone

from .importing import MAX_REPORTED_ERRORS, ImportFailed, Problem, _jsonl_records
from ..models import (
    Assignment, Backend, Campaign, CampaignItem, Choice, Comparison, Generator, Judge, JudgeVerdict, PairingSource,
    Preferred, Profile, Sample, Vote,
)
from ..profiles.format import REASON_KINDS
from ..profiles.models import clean_attributes
from ..profiles.store import fields_of, mark_near_duplicates, parse_stored
from ..roles import EXPERTS_GROUP

IMPORTED_PROMPT = "imported"
USERNAME_MAX = 150


class RowError(Exception):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass
class Imported:
    """What one file brought in, for the summary an admin reads."""

    outcomes: Counter = field(default_factory=Counter)  # "created", "unchanged", "votes", "verdicts", …
    profiles: int = 0  # profile rows in the file
    invalid: Counter = field(default_factory=Counter)  # reason kind → profiles of the file stored as invalid
    profile_ids: set[int] = field(default_factory=set)
    near_duplicates: int = 0
    on_invalid: Counter = field(default_factory=Counter)  # "votes" / "verdicts" on a pair with an invalid profile
    renamed: dict[str, str] = field(default_factory=dict)  # name in the file → username
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [", ".join(f"{count} {what}" for what, count in self.outcomes.items()) or "nothing to do"]
        if self.profiles:
            parts.append(invalid_summary(self.invalid, self.profiles))
        if self.near_duplicates:
            parts.append(f"{self.near_duplicates} near-duplicate(s) of another profile of their sample: kept, never "
                         "paired")
        for what, count in sorted(self.on_invalid.items()):
            parts.append(f"{count} {what} compare a profile stored as invalid: kept, and left out of agreement and "
                         "rankings")
        if self.renamed:
            shown = ", ".join(f"{name!r} → {username!r}" for name, username in list(self.renamed.items())[:5])
            more = f" and {len(self.renamed) - 5} more" if len(self.renamed) > 5 else ""
            parts.append(f"{len(self.renamed)} expert name(s) are not usernames and were stored as {shown}{more} "
                         "(the name as written is their display name)")
        return "; ".join(parts + self.notes)


def invalid_summary(invalid: Counter, total: int) -> str:
    """ "51 of 117 profiles invalid: 30 have more than 8 competencies, …" (or "all 117 profiles valid")."""
    count = sum(invalid.values())
    if not count:
        return f"all {total} profile(s) valid"
    reasons = ", ".join(f"{n} {REASON_KINDS.get(kind, kind)}" for kind, n in invalid.most_common())
    return f"{count} of {total} profile(s) invalid: {reasons}"


def run_rows(path: Path, handle_row: Callable[[dict, Imported], None], finish: Callable[[Imported], None] = None
             ) -> Imported:
    """Apply handle_row to every record inside one transaction; roll everything back on any problem."""
    problems: list[Problem] = []
    result = Imported()
    rows = 0

    class Rollback(Exception):
        pass

    try:
        with transaction.atomic(), Path(path).open("rb") as handle:
            for line, record in _jsonl_records(handle, problems):
                rows += 1
                try:
                    with transaction.atomic():
                        handle_row(record, result)
                except RowError as exc:
                    problems.append(Problem(line, exc.field, str(exc)))
                except IntegrityError as exc:
                    problems.append(Problem(line, "", f"conflicts with stored data ({exc})"))
            if not rows and not problems:
                problems.append(Problem(0, "", "the file holds no records"))
            if problems:
                raise Rollback
            if finish:
                finish(result)
    except Rollback:
        raise ImportFailed(Path(path).name, problems[:MAX_REPORTED_ERRORS],
                           max(0, len(problems) - MAX_REPORTED_ERRORS))
    return result


def text_field(record: dict, name: str, max_length: int | None = None) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RowError(name, "missing" if value is None else "expected non-empty text")
    if max_length and len(value.strip()) > max_length:
        raise RowError(name, f"{len(value.strip())} characters; at most {max_length}")
    return no_nul(value.strip(), name)


def no_nul(value: str, name: str) -> str:
    """Checked before the database sees it: PostgreSQL refuses a NUL byte in any text, and the whole import
    would fail on a database error instead of a line in the report."""
    if "\x00" in value:
        raise RowError(name, "contains a NUL byte, which no text column can hold")
    return value


def choice_field(record: dict, name: str, allowed: list[str]) -> str:
    value = record.get(name)
    if value not in allowed:
        raise RowError(name, f"expected one of {', '.join(allowed)}, got {value!r}")
    return value


def sample_of(record: dict) -> Sample:
    name = text_field(record, "sample")
    sample = Sample.objects.filter(name=name).first()
    if sample is None:
        raise RowError("sample", f"no sample named {name!r}; import its documents first")
    return sample


def _candidate(record: dict, name: str = "candidate") -> int:
    value = record.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= CANDIDATE_MAX:
        raise RowError(name, f"expected a whole number from 0 to {CANDIDATE_MAX}, got {value!r}")
    return value


CANDIDATE_MAX = 32767  # Profile.candidate_index is a PositiveSmallIntegerField


# --- profiles ----------------------------------------------------------------------------------------


def _generator(record: dict) -> Generator:
    name = text_field(record, "generator", Generator._meta.get_field("name").max_length)
    try:
        attributes = clean_attributes(record.get("attributes"))
    except ValueError as exc:
        raise RowError("attributes", str(exc)) from None
    generator, created = Generator.objects.get_or_create(
        name=name, defaults={"backend": Backend.IMPORTED, "model": "imported", "attributes": attributes})
    if created or not attributes:
        return generator
    clashes = [f"{key}={generator.attributes[key]!r}, this row says {value!r}" for key, value in attributes.items()
               if key in generator.attributes and generator.attributes[key] != value]
    if clashes:
        raise RowError("attributes", f"generator {name!r} already has " + "; ".join(clashes))
    if any(key not in generator.attributes for key in attributes):
        generator.attributes = {**generator.attributes, **attributes}
        generator.save(update_fields=["attributes"])
    return generator


def _import_profile(record: dict, result: Imported) -> None:
    sample = sample_of(record)
    text = text_field(record, "text")
    generator = _generator(record)
    index = _candidate(record)
    parsed = parse_stored(text)
    result.profiles += 1
    if not parsed.valid:
        result.invalid[parsed.reason_kind] += 1
    existing = Profile.objects.filter(sample=sample, generator=generator, candidate_index=index).first()
    if existing:
        if existing.raw_text != text:
            raise RowError("text", f"profile {generator.name} #{index} of {sample.name} exists with other text")
        result.outcomes["unchanged"] += 1
        result.profile_ids.add(existing.pk)
        return
    profile = Profile.objects.create(sample=sample, generator=generator, candidate_index=index, raw_text=text,
                                     prompt_version=IMPORTED_PROMPT, **fields_of(parsed))
    result.profile_ids.add(profile.pk)
    mark_near_duplicates(sample.pk)
    result.outcomes["created"] += 1


def _count_near_duplicates(result: Imported) -> None:
    result.near_duplicates = Profile.objects.filter(pk__in=result.profile_ids, duplicate_of__isnull=False).count()


def import_profiles(path: Path | str) -> Imported:
    return run_rows(Path(path), _import_profile, _count_near_duplicates)


# --- votes and verdicts ------------------------------------------------------------------------------


def profile_ref(ref, side: str, sample: Sample) -> Profile:
    if not isinstance(ref, dict):
        raise RowError(side, 'expected {"generator": ..., "candidate": ...}')
    profile = Profile.objects.filter(sample=sample, generator__name=ref.get("generator"),
                                     candidate_index=_candidate(ref)).first()
    if profile is None:
        raise RowError(side, f"no profile {ref.get('generator')!r} #{ref.get('candidate', 0)} of {sample.name!r}")
    return profile


def comparison_of(sample: Sample, first: Profile, second: Profile, side: str = "b") -> tuple[Comparison, bool]:
    """The stored comparison of the pair, and whether the file's first profile is the canonical b."""
    if first.pk == second.pk:
        raise RowError(side, "a and b are the same profile")
    a, b = Comparison.canonical(first, second)
    comparison, _ = Comparison.objects.get_or_create(
        profile_a=a, profile_b=b, defaults={"sample": sample, "source": PairingSource.IMPORTED}
    )
    return comparison, a.pk != first.pk


def swap(label: str, swapped: bool) -> str:
    return {"a": "b", "b": "a"}.get(label, label) if swapped else label


def _import_vote(record: dict, campaign_name: str, result: Imported) -> None:
    if ("expert" in record) == ("judge" in record):
        raise RowError("expert", "a row has either 'expert' or 'judge'")
    sample = sample_of(record)
    first, second = profile_ref(record.get("a"), "a", sample), profile_ref(record.get("b"), "b", sample)
    comparison, swapped = comparison_of(sample, first, second)
    on_invalid = not (first.is_valid and second.is_valid)
    if "judge" in record:
        preferred = choice_field(record, "preferred", Preferred.values)
        order = choice_field(record, "order", ["ab", "ba"])
        outcome = store_verdict(judge_named(text_field(record, "judge", Judge._meta.get_field("name").max_length)),
                                comparison, swapped, order, preferred,
                                no_nul(str(record.get("reasoning") or ""), "reasoning"))
    else:
        if not campaign_name:
            raise RowError("expert", "expert votes need --campaign")
        campaign = Campaign.objects.get_or_create(name=campaign_name)[0]
        expert = expert_named(text_field(record, "expert"), result)
        outcome = store_vote(campaign, expert, comparison, swap(choice_field(record, "choice", Choice.values), swapped),
                             no_nul(str(record.get("rationale") or ""), "rationale"))
    result.outcomes[outcome] += 1
    if on_invalid and outcome != "unchanged":
        result.on_invalid[outcome] += 1


def store_vote(campaign: Campaign, expert, comparison: Comparison, choice: str, rationale: str = "") -> str:
    """An expert's vote (canonical ``choice``) on the comparison, in the campaign, as one given on the review
    screen; "votes" when stored, "unchanged" when the same vote is there, RowError when another is."""
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
                        choice=choice, first_choice=choice, rationale=rationale)
    Assignment.objects.filter(pk=assignment.pk).update(voted_at=timezone.now())  # answered, as a vote in the app
    return "votes"


def judge_named(name: str) -> Judge:
    return Judge.objects.get_or_create(name=name, defaults={"model": "imported"})[0]


def store_verdict(judge: Judge, comparison: Comparison, swapped: bool, order: str, preferred: str,
                  reasoning: str = "") -> str:
    """A judge's verdict given in one presentation order; ``order`` and ``preferred`` in the file's a/b terms."""
    canonical_order = {"ab": "ba", "ba": "ab"}[order] if swapped else order
    preferred = swap(preferred, swapped)
    existing = JudgeVerdict.objects.filter(comparison=comparison, judge=judge, order=canonical_order).first()
    if existing:
        if existing.preferred != preferred:
            raise RowError("preferred", f"judge {judge.name} already said {existing.preferred!r} in this order")
        return "unchanged"
    JudgeVerdict.objects.create(comparison=comparison, judge=judge, order=canonical_order, preferred=preferred,
                                is_valid=True, reasoning=reasoning, raw_text=reasoning, prompt_version=IMPORTED_PROMPT)
    return "verdicts"


_NOT_IN_USERNAMES = re.compile(r"[^\w.@+-]+")


def username_for(name: str) -> str:
    """The name as a username the admin accepts (letters, digits, @ . + - _): "Maria Schmidt" → "Maria_Schmidt"."""
    username = _NOT_IN_USERNAMES.sub("_", unicodedata.normalize("NFKC", name).strip()).strip("_")
    if not username:
        raise RowError("expert", f"{name!r} has no letters or digits to make a username of")
    if len(username) > USERNAME_MAX:
        raise RowError("expert", f"{name!r} is longer than a username may be ({USERNAME_MAX} characters)")
    UnicodeUsernameValidator()(username)  # the admin's own rule: must hold for what we made
    return username


def expert_named(name: str, result: Imported | None = None):
    """The expert a file names, created (without a usable password) when new.

    A name that is not a valid username is stored under ``username_for(name)`` with the name as written as the
    display name (first name); two different names that would share a username are refused.
    """
    username = username_for(name)
    user = get_user_model().objects.filter(username=username).first()
    if username != name:
        if user is not None and user.first_name not in ("", name):
            raise RowError("expert", f"{name!r} would be the username {username!r}, which is already "
                                     f"{user.first_name!r}; name that expert {username!r} in the file to mean them")
        if result is not None:
            earlier = next((n for n, u in result.renamed.items() if u == username and n != name), None)
            if earlier:
                raise RowError("expert", f"{name!r} and {earlier!r} would both be the username {username!r}")
            result.renamed[name] = username
    experts = Group.objects.get_or_create(name=EXPERTS_GROUP)[0]
    if user is None:
        user = get_user_model()(username=username, first_name=name if username != name else "")
        # Imported people can be analysed but cannot log in until an admin sets a password.
        user.set_unusable_password()
        user.save()
        user.groups.add(experts)
    elif not user.groups.filter(pk=experts.pk).exists():
        # An import never gives an existing account a role (a staff member, someone without one).
        raise RowError("expert", f"{username!r} is an existing account that is not an expert; add it to the "
                                 f"experts group first (Admin → Users), or name a new expert")
    return user


def import_votes(path: Path | str, campaign_name: str = "") -> Imported:
    return run_rows(Path(path), lambda record, result: _import_vote(record, campaign_name, result))
