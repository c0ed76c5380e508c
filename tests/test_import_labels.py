import json

import pytest
from django.core.management import CommandError, call_command

from annotation.documents.importing import ImportFailed
from annotation.documents.labels import import_profiles, import_votes
from annotation.models import Campaign, Comparison, JudgeVerdict, Profile, Sample, Vote

pytestmark = pytest.mark.django_db

GOOD = ('Domain: "Hydrology"\n\nCompetencies:\n- Flood modelling: Builds flood models.\n'
        "- Field sampling: Samples rivers.\n- Remote sensing: Uses satellite data.")
OTHER = ('Domain: "Climate science"\n\nCompetencies:\n- Downscaling: Downscales projections.\n'
         "- Statistics: Fits extreme-value models.\n- Coding: Writes Fortran.")


def jsonl(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sample():
    return Sample.objects.create(name="s1")


def profile_row(generator, candidate, text, sample="s1"):
    return {"sample": sample, "generator": generator, "candidate": candidate, "text": text}


def test_profiles_are_parsed_validated_and_reimport_is_a_no_op(tmp_path, sample):
    path = jsonl(tmp_path, [profile_row("old", 0, GOOD), profile_row("old", 1, "Domain: x\n- only one: y")])
    assert import_profiles(path).outcomes == {"created": 2}
    valid, invalid = Profile.objects.order_by("candidate_index")
    assert valid.is_valid and valid.domain == "Hydrology" and len(valid.competencies) == 3
    assert not invalid.is_valid and invalid.invalid_reason and invalid.raw_text.startswith("Domain: x")
    assert import_profiles(path).outcomes == {"unchanged": 2}


def test_a_bad_profile_file_imports_nothing(tmp_path, sample):
    path = jsonl(tmp_path, [profile_row("g", 0, GOOD), profile_row("g", 1, GOOD, sample="missing"),
                            {"sample": "s1", "generator": "g", "candidate": -1, "text": GOOD}])
    with pytest.raises(ImportFailed) as info:
        import_profiles(path)
    report = info.value.report()
    assert "line 2, field 'sample': no sample named 'missing'" in report
    assert "line 3, field 'candidate': expected a whole number" in report
    assert Profile.objects.count() == 0


def test_votes_and_verdicts_are_stored_canonically(tmp_path, sample):
    import_profiles(jsonl(tmp_path, [profile_row("g", 0, GOOD), profile_row("g", 1, OTHER)], name="p.jsonl"))
    first, second = Profile.objects.order_by("pk")
    # The file names the later profile "a": CompX must translate to its canonical order.
    pair = {"sample": "s1", "a": {"generator": "g", "candidate": 1}, "b": {"generator": "g", "candidate": 0}}
    rows = [
        {**pair, "expert": "dr_smith", "choice": "a", "rationale": "more specific"},
        {**pair, "judge": "gpt-judge", "order": "ab", "preferred": "a", "reasoning": "<b>A</b> is better"},
    ]
    assert import_votes(jsonl(tmp_path, rows), campaign_name="earlier study").outcomes == {"verdicts": 1, "votes": 1}
    comparison = Comparison.objects.get()
    assert (comparison.profile_a, comparison.profile_b) == (first, second)
    vote = Vote.objects.get()
    assert vote.choice == "b" and vote.expert.username == "dr_smith" and not vote.expert.has_usable_password()
    assert vote.assignment.voted_at is not None  # answered, as a vote given on the review screen
    verdict = JudgeVerdict.objects.get()
    assert (verdict.order, verdict.preferred, verdict.reasoning) == ("ba", "b", "<b>A</b> is better")
    assert Campaign.objects.get().items.count() == 1
    assert import_votes(jsonl(tmp_path, rows), campaign_name="earlier study").outcomes == {"unchanged": 2}


def test_a_conflicting_vote_is_reported_and_nothing_is_written(tmp_path, sample):
    import_profiles(jsonl(tmp_path, [profile_row("g", 0, GOOD), profile_row("g", 1, OTHER)], name="p.jsonl"))
    pair = {"sample": "s1", "a": {"generator": "g", "candidate": 0}, "b": {"generator": "g", "candidate": 1}}
    rows = [{**pair, "expert": "x", "choice": "a"}, {**pair, "expert": "x", "choice": "b"},
            {**pair, "expert": "y", "choice": "maybe"}]
    with pytest.raises(CommandError) as info:
        call_command("import_votes", str(jsonl(tmp_path, rows)), "--campaign", "c")
    assert "line 2, field 'choice': x already voted 'a'" in str(info.value)
    assert "line 3, field 'choice': expected one of a, b, tie, both_bad" in str(info.value)
    assert (Vote.objects.count(), Campaign.objects.count(), Comparison.objects.count()) == (0, 0, 0)


def test_expert_votes_need_a_campaign(tmp_path, sample):
    import_profiles(jsonl(tmp_path, [profile_row("g", 0, GOOD), profile_row("g", 1, OTHER)], name="p.jsonl"))
    rows = [{"sample": "s1", "a": {"generator": "g"}, "b": {"generator": "g", "candidate": 1}, "expert": "x",
             "choice": "a"}]
    with pytest.raises(ImportFailed, match="expert votes need --campaign"):
        import_votes(jsonl(tmp_path, rows))
