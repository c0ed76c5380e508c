"""Knockout tournaments played elsewhere: import one expert's or one judge's tree, and export a campaign's study.

One JSON object a line, one tournament over one sample's profiles; matches in any order within a round,
rounds in play order; "b": null is a bye (the entrant goes on unjudged)::

    {"sample": "s", "expert": "Maria Schmidt", "matches": [
      {"round": 1, "a": {"generator": "g1", "candidate": 0}, "b": {"generator": "g2", "candidate": 0},
       "winner": "a", "rationale": "..."},
      {"round": 1, "a": {"generator": "g3", "candidate": 0}, "b": null},
      {"round": 2, "a": {"generator": "g1", "candidate": 0}, "b": {"generator": "g3", "candidate": 0},
       "winner": "b"}]}

A judge's tournament names "judge" instead of "expert", and each match says in which order the judge saw the
pair ("order": "ab" when the file's a was shown first; or once for the whole tournament). ``winner`` is "a" or
"b"; an expert may also answer "tie" or "both_bad" (a judge "tie"): then whichever of the two plays on
advanced without a preference.

Stored as what it is: each judged match is the expert's vote in the campaign (a judge's verdict in the one
order it was given), exactly like a vote imported one by one, and the preferences the tree implies (the winner
beats everyone its loser had beaten) are ``TournamentPreference`` rows marked implied: never votes, never in
agreement, in rankings only when asked for. The tree itself (rounds, byes, ties) is kept as ``Tournament`` and
``TournamentMatch`` rows, so ``export_study`` writes it back as it came.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from django.db.models import Q

from .labels import (
    Imported, RowError, comparison_of, expert_named, judge_named, profile_ref, run_rows, sample_of, store_verdict,
    store_vote, swap, text_field, username_for,
)
from ..models import (
    Campaign, CampaignItem, Choice, Comparison, Document, JudgeVerdict, MatchOutcome, Profile, SampleDocument,
    Tournament, TournamentMatch, TournamentPreference, Vote,
)

EXPERT_OUTCOMES = [Choice.A, Choice.B, Choice.TIE, Choice.BOTH_BAD]
JUDGE_OUTCOMES = [Choice.A, Choice.B, Choice.TIE]


@dataclass(frozen=True)
class Match:
    """One match of a file, resolved: profiles, outcome in the match's own a/b terms."""

    index: int  # position in the file's list
    round: int
    a: Profile
    b: Profile | None  # None: a bye
    outcome: str  # "a" | "b" | "tie" | "both_bad" | "bye"
    order: str = ""  # a judge's: "ab" when a was shown first
    note: str = ""  # rationale or reasoning

    @property
    def where(self) -> str:
        return f"matches[{self.index}]"


@dataclass(frozen=True)
class Won:
    chosen: Profile
    rejected: Profile
    implied: bool
    match: Match  # the judged match it comes from


def preferences(matches: list[Match]) -> list[Won]:
    """What a knockout tree says, checking it is one: nobody plays on after losing, twice in a round, or
    after a tie the other entrant also played on from. Same rules as ``judging.pairing.Tournament``."""
    lost: dict[int, Match] = {}
    played: set[tuple[int, int]] = set()
    beaten: dict[int, list[Profile]] = {}
    tied: dict[int, tuple[Profile, Match]] = {}  # entrant → the other entrant of its tied match, the match
    won: list[Won] = []
    for match in sorted(matches, key=lambda m: (m.round, m.index)):
        for entrant in (match.a, match.b):
            if entrant is None:
                continue
            if entrant.pk in lost:
                raise RowError(match.where, f"{_name(entrant)} lost in {lost[entrant.pk].where} (round "
                                            f"{lost[entrant.pk].round}) and cannot play again")
            if (match.round, entrant.pk) in played:
                raise RowError(match.where, f"{_name(entrant)} plays twice in round {match.round}")
            played.add((match.round, entrant.pk))
            if entrant.pk in tied:  # it advanced from a tie: the other entrant is out
                other, tie = tied.pop(entrant.pk)
                tied.pop(other.pk, None)
                lost[other.pk] = tie
        if match.outcome in ("a", "b"):
            winner, loser = (match.a, match.b) if match.outcome == "a" else (match.b, match.a)
            won.append(Won(winner, loser, False, match))
            won += [Won(winner, x, True, match) for x in beaten.get(loser.pk, [])]
            beaten.setdefault(winner.pk, []).extend([loser, *beaten.get(loser.pk, [])])
            lost[loser.pk] = match
        elif match.outcome != "bye":
            tied[match.a.pk], tied[match.b.pk] = (match.b, match), (match.a, match)
    return won


def _name(profile: Profile) -> str:
    return f"{profile.generator.name} #{profile.candidate_index}"


def _matches(record: dict, sample, judged: bool) -> list[Match]:
    raw = record.get("matches")
    if not isinstance(raw, list) or not raw:
        raise RowError("matches", "expected a non-empty list of matches")
    default_order = record.get("order")
    matches = []
    for index, item in enumerate(raw):
        where = f"matches[{index}]"
        if not isinstance(item, dict):
            raise RowError(where, "expected an object with a, b, winner")
        number = item.get("round", 1)
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise RowError(f"{where}.round", f"expected a round number ≥ 1, got {number!r}")
        a = profile_ref(item.get("a"), f"{where}.a", sample)
        if item.get("b") is None:
            matches.append(Match(index, number, a, None, MatchOutcome.BYE))
            continue
        b = profile_ref(item["b"], f"{where}.b", sample)
        if a.pk == b.pk:
            raise RowError(f"{where}.b", 'a and b are the same profile; write a bye as {"a": ..., "b": null}')
        allowed = JUDGE_OUTCOMES if judged else EXPERT_OUTCOMES
        outcome = item.get("winner")
        if outcome not in allowed:
            raise RowError(f"{where}.winner", f"expected one of {', '.join(allowed)}, got {outcome!r}")
        order = ""
        if judged:
            order = item.get("order", default_order)
            if order not in ("ab", "ba"):
                raise RowError(f"{where}.order", "a judge's match needs the order it was shown in: 'ab' (a first) "
                                                 f"or 'ba', for the match or the whole tournament; got {order!r}")
        note = item.get("reasoning" if judged else "rationale") or ""
        matches.append(Match(index, number, a, b, outcome, order, str(note)))
    return matches


def _signature(rows) -> list[tuple]:
    return [(m.round, m.a.pk if isinstance(m, Match) else m.entrant_a_id,
             (m.b.pk if m.b else None) if isinstance(m, Match) else m.entrant_b_id, m.outcome, m.order)
            for m in rows]


def _import_tournament(record: dict, campaign_name: str, result: Imported) -> None:
    if ("expert" in record) == ("judge" in record):
        raise RowError("expert", "a tournament has either 'expert' or 'judge'")
    sample = sample_of(record)
    judged = "judge" in record
    if not judged and not campaign_name:
        raise RowError("expert", "an expert's tournament needs --campaign (its matches are votes in it)")
    campaign = Campaign.objects.get_or_create(name=campaign_name)[0] if campaign_name else None
    judge = judge_named(text_field(record, "judge")) if judged else None
    expert = None if judged else expert_named(text_field(record, "expert"), result)
    matches = _matches(record, sample, judged)
    won = preferences(matches)
    who = Q(judge=judge) if judged else Q(expert=expert, campaign=campaign)
    existing = Tournament.objects.filter(who, sample=sample).first()
    if existing:
        if _signature(existing.matches.order_by("position")) != _signature(matches):
            raise RowError("matches", f"{judge or expert}'s tournament over {sample.name!r} is already imported "
                                      "with other matches")
        result.outcomes["unchanged tournaments"] += 1
        return
    tournament = Tournament.objects.create(sample=sample, judge=judge, expert=expert, campaign=campaign)
    result.outcomes["tournaments"] += 1
    comparisons = {}
    for match in matches:
        comparison = None
        if match.b is not None:
            comparison, swapped = comparison_of(sample, match.a, match.b, f"{match.where}.b")
            comparisons[match.index] = comparison
            if campaign is not None:
                CampaignItem.objects.get_or_create(campaign=campaign, comparison=comparison)
            if judged:
                outcome = store_verdict(judge, comparison, swapped, match.order, match.outcome, match.note)
            else:
                outcome = store_vote(campaign, expert, comparison, swap(match.outcome, swapped), match.note)
            result.outcomes[outcome] += 1
            if not (match.a.is_valid and match.b.is_valid) and outcome != "unchanged":
                result.on_invalid[outcome] += 1
        else:
            result.outcomes["byes"] += 1
        TournamentMatch.objects.create(tournament=tournament, position=match.index, round=match.round,
                                       entrant_a=match.a, entrant_b=match.b, comparison=comparison,
                                       outcome=match.outcome, order=match.order)
    TournamentPreference.objects.bulk_create([
        TournamentPreference(judge=judge, tournament=tournament, sample=sample, chosen=w.chosen, rejected=w.rejected,
                             implied=w.implied, comparison=comparisons[w.match.index]) for w in won])
    result.outcomes["implied preferences (stored as implied, not votes)"] += sum(w.implied for w in won)


def import_tournaments(path: Path | str, campaign_name: str = "") -> Imported:
    return run_rows(Path(path), lambda record, result: _import_tournament(record, campaign_name, result))


# --- export ------------------------------------------------------------------------------------------


def _ref(profile: Profile) -> dict:
    return {"generator": profile.generator.name, "candidate": profile.candidate_index}


def _expert_name(user) -> str:
    """The name an import gave (kept as the display name when it was not a username), else the username."""
    return user.first_name if user.first_name and username_for(user.first_name) == user.username else user.username


def export_study(campaign: Campaign, folder: Path | str) -> dict[str, int]:
    """Write the campaign's study in the import formats: documents.jsonl, profiles.jsonl, tournaments.jsonl and
    votes.jsonl (votes and judge verdicts not part of a tournament). Importing them into an empty database, in
    that order and with the same campaign name, gives the same figures. Returns rows written per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    comparisons = Comparison.objects.filter(campaign_items__campaign=campaign)
    tournaments = Tournament.objects.filter(campaign=campaign).select_related("sample", "judge", "expert")
    sample_ids = set(comparisons.values_list("sample_id", flat=True)) | set(tournaments.values_list("sample_id",
                                                                                                   flat=True))
    counts = {}
    counts["documents.jsonl"] = _write(folder / "documents.jsonl", _documents(sample_ids))
    counts["profiles.jsonl"] = _write(folder / "profiles.jsonl", _profiles(sample_ids))
    counts["tournaments.jsonl"] = _write(folder / "tournaments.jsonl", _tournaments(tournaments))
    counts["votes.jsonl"] = _write(folder / "votes.jsonl", _votes(campaign, comparisons))
    return counts


def _write(path: Path, rows) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _documents(sample_ids):
    places = (SampleDocument.objects.filter(sample_id__in=sample_ids).select_related("sample", "document")
              .order_by("sample_id", "position"))
    for place in places:
        doc: Document = place.document
        row = {"id": doc.external_id, "title": doc.title, "abstract": doc.abstract, "authors": doc.authors,
               "sample": place.sample.name}
        if doc.year:
            row["year"] = doc.year
        yield row


def _profiles(sample_ids):
    for profile in (Profile.objects.filter(sample_id__in=sample_ids).select_related("sample", "generator")
                    .order_by("id")):
        row = {"sample": profile.sample.name, "generator": profile.generator.name,
               "candidate": profile.candidate_index, "text": profile.raw_text}
        if profile.generator.attributes:
            row["attributes"] = profile.generator.attributes
        yield row


def _tournaments(tournaments):
    for tournament in tournaments.order_by("id"):
        row = {"sample": tournament.sample.name}
        if tournament.judge_id:
            row["judge"] = tournament.judge.name
        else:
            row["expert"] = _expert_name(tournament.expert)
        row["matches"] = [_match_row(m, tournament) for m in tournament.matches.select_related(
            "entrant_a__generator", "entrant_b__generator", "comparison").order_by("position")]
        yield row


def _match_row(match: TournamentMatch, tournament: Tournament) -> dict:
    row = {"round": match.round, "a": _ref(match.entrant_a), "b": _ref(match.entrant_b) if match.entrant_b else None}
    if match.outcome == MatchOutcome.BYE:
        return row
    row["winner"] = match.outcome
    if match.order:
        row["order"] = match.order
    note = _note(match, tournament)
    if note:
        row["reasoning" if tournament.judge_id else "rationale"] = note
    return row


def _note(match: TournamentMatch, tournament: Tournament) -> str:
    swapped = match.comparison.profile_a_id != match.entrant_a_id
    if tournament.judge_id:
        order = {"ab": "ba", "ba": "ab"}[match.order] if swapped else match.order
        verdict = JudgeVerdict.objects.filter(comparison=match.comparison, judge=tournament.judge, order=order).first()
        return verdict.reasoning if verdict else ""
    vote = Vote.objects.filter(comparison=match.comparison, expert=tournament.expert).first()
    return vote.rationale if vote else ""


def _votes(campaign: Campaign, comparisons):
    in_tournaments = TournamentMatch.objects.filter(tournament__campaign=campaign, comparison__isnull=False)
    expert_matches = set(in_tournaments.filter(tournament__expert__isnull=False)
                         .values_list("comparison_id", "tournament__expert_id"))
    judge_matches = set(in_tournaments.filter(tournament__judge__isnull=False)
                        .values_list("comparison_id", "tournament__judge_id"))
    related = ["comparison__sample", "comparison__profile_a__generator", "comparison__profile_b__generator"]
    for vote in Vote.objects.counted().in_campaign(campaign).select_related("expert", *related).order_by("comparison_id", "id"):
        if (vote.comparison_id, vote.expert_id) in expert_matches:
            continue
        row = _pair(vote.comparison)
        row.update(expert=_expert_name(vote.expert), choice=vote.first_choice)
        if vote.rationale:
            row["rationale"] = vote.rationale
        yield row
    verdicts = (JudgeVerdict.objects.filter(comparison__in=comparisons, is_valid=True)
                .select_related("judge", *related).order_by("comparison_id", "judge_id", "order"))
    for verdict in verdicts:
        if (verdict.comparison_id, verdict.judge_id) in judge_matches:
            continue
        row = _pair(verdict.comparison)
        row.update(judge=verdict.judge.name, order=verdict.order, preferred=verdict.preferred)
        if verdict.reasoning:
            row["reasoning"] = verdict.reasoning
        yield row


def _pair(comparison: Comparison) -> dict:
    return {"sample": comparison.sample.name, "a": _ref(comparison.profile_a), "b": _ref(comparison.profile_b)}
