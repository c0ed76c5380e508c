"""A study run elsewhere, brought in through the documented import commands and read back as figures.

The study (tests/study_factory.py) is issue 16's: 4 models × 3 methods, an expert's knockout tournament over
their own (title-only) papers, a judge with one verdict per match in one order, cross-checks by a second expert.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserChangeForm
from django.core.management import CommandError, call_command

from annotation import stats
from annotation.agreement import figures
from annotation.documents.importing import ImportFailed
from annotation.documents.models import TitleOnly
from annotation.documents.tournaments import import_tournaments
from annotation.models import (
    Campaign, Comparison, Document, Generator, Judge, JudgeVerdict, Profile, Sample, Tournament, TournamentMatch,
    TournamentPreference, Vote,
)
from annotation.start import start_generation
from tests.labels_factory import World
from tests.study_factory import CAMPAIGN, EXPERTS, write_study
from tests.test_judging_server import server  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db
BOOT = 40  # resamples: enough to compare intervals between two imports, quick on a shared machine


def run(command: str, *args) -> str:
    out = io.StringIO()
    call_command(command, *map(str, args), stdout=out)
    return out.getvalue()


def import_study(study) -> dict[str, str]:
    """The four documented commands, in order; what each printed."""
    return {
        "documents": run("import_documents", study.documents, "--allow-title-only"),
        "profiles": run("import_profiles", study.profile_file),
        "tournaments": run("import_tournaments", study.tournaments, "--campaign", study.campaign),
        "votes": run("import_votes", study.votes, "--campaign", study.campaign),
    }


@pytest.fixture
def study(tmp_path):
    return write_study(tmp_path / "study")


@pytest.fixture
def imported(study):
    return study, import_study(study)


def test_a_study_imports_with_the_documented_formats_and_says_what_it_stored(imported):
    study, printed = imported
    assert "24 document(s) are title-only" in printed["documents"]
    invalid = sum(study.invalid.values())
    assert (f"{invalid} of {study.profiles} profile(s) invalid: {study.invalid['too_many']} have more than 8 "
            f"competencies, {study.invalid['name_too_long']} have a competency name over 80 characters") \
        in printed["profiles"]
    assert f"{len(EXPERTS)} tournaments" in printed["tournaments"]
    assert f"{study.byes} byes" in printed["tournaments"] and f"{study.matches} votes" in printed["tournaments"]
    assert f"{study.implied} implied preferences (stored as implied, not votes)" in printed["tournaments"]
    assert f"{study.on_invalid_matches} votes compare a profile stored as invalid" in printed["tournaments"]
    assert f"{study.matches} verdicts" in printed["votes"] and f"{study.cross_checks} votes" in printed["votes"]
    # Nothing dropped: every match is a vote (and a verdict), every bye and implied preference is kept as such.
    assert Vote.objects.count() == study.matches + study.cross_checks
    assert TournamentMatch.objects.filter(outcome="bye").count() == study.byes
    assert TournamentPreference.objects.filter(implied=True).count() == study.implied
    assert TournamentPreference.objects.filter(implied=False).count() == TournamentMatch.objects.filter(
        outcome__in=["a", "b"]).count()
    assert Profile.objects.filter(is_valid=False).count() == invalid
    # Importing the same files again changes nothing.
    again = import_study(study)
    assert "0 document(s) created" in again["documents"] and "unchanged tournaments" in again["tournaments"]
    assert Vote.objects.count() == study.matches + study.cross_checks


def test_expert_names_become_usernames_the_admin_accepts_and_keep_their_name(imported):
    maria = get_user_model().objects.get(username="Maria_Schmidt")
    assert maria.first_name == "Maria Schmidt" and not maria.has_usable_password()
    form = UserChangeForm(instance=maria, data={"username": maria.username, "first_name": maria.first_name,
                                                "last_name": "", "email": "", "date_joined": maria.date_joined})
    assert form.is_valid(), form.errors


def test_two_names_that_would_share_a_username_are_refused(tmp_path):
    world = World()
    sample = world.sample("s")
    a, b = world.profile(sample, "g1"), world.profile(sample, "g2")
    pair = {"sample": "s", "a": {"generator": "g1", "candidate": a.candidate_index},
            "b": {"generator": "g2", "candidate": b.candidate_index}}
    path = tmp_path / "votes.jsonl"
    path.write_text(json.dumps({**pair, "expert": "Ann Lee", "choice": "a"}) + "\n"
                    + json.dumps({**pair, "expert": "Ann  Lee!", "choice": "a"}) + "\n")
    with pytest.raises(CommandError, match="line 2, field 'expert': 'Ann  Lee!' would be the username 'Ann_Lee', which is already 'Ann Lee'"):
        run("import_votes", path, "--campaign", "c")
    assert Vote.objects.count() == 0


def test_title_only_samples_are_refused_by_generation_and_judging(imported):
    sample = Sample.objects.title_only().first()
    assert sample.title_only and Document.objects.filter(abstract="").count() == 24
    generator = Generator.objects.create(name="local")
    with pytest.raises(TitleOnly, match="Generation needs abstracts, and 6 of the samples have title-only"):
        start_generation(generator, Sample.objects.all())
    Judge.objects.create(name="j", model="m")
    with pytest.raises(CommandError, match="Judging campaign .* needs abstracts"):
        call_command("judge_comparisons", "--judge", "j", "--pairing", "existing", "--campaign", CAMPAIGN, "--no-wait")
    from annotation.judging.session import abstracts_by_sample

    with pytest.raises(TitleOnly, match="judging needs abstracts"):
        abstracts_by_sample([sample.pk])


def test_a_document_without_an_abstract_is_an_error_unless_the_file_is_a_title_only_study(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "d1", "title": "T", "authors": ["A"]}) + "\n")
    with pytest.raises(CommandError, match="line 1, field 'abstract': missing .*--allow-title-only"):
        run("import_documents", path)
    assert "1 document(s) are title-only" in run("import_documents", path, "--allow-title-only")


# --- tournaments -------------------------------------------------------------------------------------


def tournament_file(tmp_path, matches, who=None):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"sample": "s", **(who or {"expert": "alice"}), "matches": matches}) + "\n")
    return path


def ref(generator):
    return {"generator": generator, "candidate": 0}


@pytest.fixture
def four(alice):
    world = World()
    sample = world.sample("s")
    return [world.profile(sample, g) for g in ("w", "x", "y", "z")]


def test_a_bracket_with_a_bye_stores_its_matches_as_votes_and_its_implications_as_implied(tmp_path, four):
    # Round 1: w beats x, y has a bye; round 2: w beats y; round 3: z (a late entrant, a bye) beats w.
    matches = [{"round": 1, "a": ref("w"), "b": ref("x"), "winner": "a"}, {"round": 1, "a": ref("y"), "b": None},
               {"round": 2, "a": ref("y"), "b": ref("w"), "winner": "b"},
               {"round": 3, "a": ref("w"), "b": ref("z"), "winner": "b"}]
    result = import_tournaments(tournament_file(tmp_path, matches), "c")
    assert result.outcomes["votes"] == 3 and result.outcomes["byes"] == 1
    chosen = {(p.chosen.generator.name, p.rejected.generator.name, p.implied)
              for p in TournamentPreference.objects.select_related("chosen__generator", "rejected__generator")}
    assert chosen == {("w", "x", False), ("w", "y", False), ("z", "w", False), ("z", "x", True), ("z", "y", True)}
    assert Vote.objects.count() == 3 and Tournament.objects.get().campaign.name == "c"


@pytest.mark.parametrize("matches, message", [
    ([{"a": ref("w"), "b": ref("x"), "winner": "a"}, {"round": 2, "a": ref("x"), "b": ref("y"), "winner": "a"}],
     "field 'matches[1]': x #0 lost in matches[0] (round 1) and cannot play again"),
    ([{"a": ref("w"), "b": ref("w"), "winner": "a"}], 'write a bye as {"a": ..., "b": null}'),
    ([{"a": ref("w"), "b": ref("x"), "winner": "a"}, {"a": ref("w"), "b": ref("y"), "winner": "a"}],
     "w #0 plays twice in round 1"),
    ([{"a": ref("w"), "b": ref("x"), "winner": "maybe"}], "matches[0].winner': expected one of a, b, tie, both_bad"),
])
def test_a_tree_that_is_no_knockout_is_refused_with_where(tmp_path, four, matches, message):
    with pytest.raises(ImportFailed, match=re.escape(message)):
        import_tournaments(tournament_file(tmp_path, matches), "c")
    assert Vote.objects.count() == 0 and Tournament.objects.count() == 0


def test_a_judges_tournament_needs_the_order_each_match_was_shown_in(tmp_path, four):
    matches = [{"a": ref("w"), "b": ref("x"), "winner": "a"}]
    with pytest.raises(ImportFailed, match="a judge's match needs the order it was shown in"):
        import_tournaments(tournament_file(tmp_path, matches, {"judge": "J"}))
    result = import_tournaments(tournament_file(tmp_path, matches, {"judge": "J", "order": "ba"}))
    assert result.outcomes["verdicts"] == 1 and Tournament.objects.get().judge.name == "J"


def test_a_campaigns_tournaments_exported_and_imported_into_an_empty_database_give_the_same_figures(
        imported, tmp_path):
    before = figure_set(Campaign.objects.get(name=CAMPAIGN))
    out = tmp_path / "exported"
    assert "tournaments.jsonl: 6 rows" in run("export_study", "--campaign", CAMPAIGN, out)
    empty_database()
    from tests.study_factory import Study

    import_study(Study(out))
    assert figure_set(Campaign.objects.get(name=CAMPAIGN)) == before


# --- invariance ----------------------------------------------------------------------------------------


def figure_set(campaign) -> dict:
    """Every figure a labelling could move, rounded to 12 places (float noise), keyed by what it is."""
    labels = figures.gather(campaign)
    result = {}
    for judge in figures.judge_behaviour(labels, n_boot=BOOT):
        if judge.agreement:
            result[f"κ {judge.name}"] = (judge.agreement.n, judge.agreement.kappa, judge.agreement.collapsed_kappa,
                                        judge.agreement.confusion.matrix)
    experts = figures.expert_vs_expert(labels, n_boot=BOOT)
    result["α"] = (experts.units, experts.alpha, experts.collapsed_alpha)
    result["pairs"] = [(p.expert_x, p.expert_y, p.n, p.kappa) for p in experts.pairs]
    for group_by in (None, "model", "method"):
        for implied in (False, True):
            ranked = figures.rankings(labels, labels.default_judge_id(), n_boot=BOOT, group_by=group_by,
                                      implied=implied)
            result[f"ranking {group_by} {implied}"] = [
                (r.generator, *(None if x is None else (x.bradley_terry, x.elo, x.wins, x.matches)
                                for x in (r.experts, r.judge))) for r in ranked.rows]
    return json.loads(json.dumps(result, default=_rounded), parse_float=lambda v: round(float(v), 9))


def _rounded(value):
    if isinstance(value, stats.Estimate):
        return [None if math.isnan(v) else round(v, 9) for v in (value.value, value.low, value.high)]
    raise TypeError(type(value))


def empty_database():
    from annotation.models import SupersededVote, Vote

    # Answers are protected from every cascade (no user action destroys one): the test empties them first.
    for model in (SupersededVote, Vote, Campaign, Tournament, Comparison, Profile, Generator, Sample, Document, Judge):
        model.objects.all().delete()
    get_user_model().objects.filter(username__in=[n.replace(" ", "_") for n in EXPERTS]).delete()


def test_flipping_half_the_pairs_and_shuffling_the_profiles_changes_no_figure(imported, tmp_path):
    study, _ = imported
    before = figure_set(Campaign.objects.get(name=CAMPAIGN))
    assert before["α"][0] == study.cross_checks - study.on_invalid_matches or before["α"][0] > 0
    empty_database()
    import_study(write_study(tmp_path / "flipped", flip=True, shuffle=True))
    after = figure_set(Campaign.objects.get(name=CAMPAIGN))
    assert after == before
    # The flips were real: pairs are stored the other way round in some comparisons.
    assert before["pairs"] and before["ranking None False"]


def test_plain_kappa_would_have_moved_with_the_flips():
    """Why the figures count both orientations: on these labels plain κ changes when one item is flipped."""
    experts, judge = ["a", "a", "b", "tie"], ["a", "b", "b", "a"]
    flipped_experts, flipped_judge = ["b", "a", "b", "tie"], ["b", "b", "b", "a"]
    assert stats.cohen_kappa(experts, judge) != pytest.approx(stats.cohen_kappa(flipped_experts, flipped_judge))
    ours = figures.agreement(experts, judge, n_boot=50).kappa
    assert figures.agreement(flipped_experts, flipped_judge, n_boot=50).kappa == ours


# --- rankings ------------------------------------------------------------------------------------------


def test_rankings_by_model_say_how_many_pairs_compare_two_variants_of_one_model(imported):
    labels = figures.gather(Campaign.objects.get(name=CAMPAIGN))
    ranked = figures.rankings(labels, None, n_boot=BOOT, group_by="model")
    same_model = sum(1 for v in labels.votes
                     if labels.comparisons[v.comparison_id].attributes_a["model"]
                     == labels.comparisons[v.comparison_id].attributes_b["model"])
    assert same_model > 0 and ranked.experts.same_group == same_model
    assert {r.generator for r in ranked.rows} == {"gpt-4o", "llama-3-70b", "mistral-7b", "phi-3-mini"}
    assert f"{same_model} pairs compare two variants of one model" in figures.counted_text(
        ranked.experts, "expert vote", "model", labels.votes_on_invalid)
    assert labels.votes_on_invalid > 0
    by_method = figures.rankings(labels, None, n_boot=BOOT, group_by="method")
    assert {r.generator for r in by_method.rows} == {"zero-shot", "few-shot", "chain-of-thought"}


def test_the_command_gives_the_dashboards_numbers_as_json_and_csv(imported, client_for, admin_user):
    campaign = Campaign.objects.get(name=CAMPAIGN)
    printed = json.loads(run("rank_generators", "--experts", "--campaign", CAMPAIGN, "--group-by", "model",
                             "--format", "json"))
    ranked = figures.rankings(figures.gather(campaign), None, group_by="model")
    dashboard = {r.generator: r.experts for r in ranked.rows if r.experts}
    assert [row["group"] for row in printed["rankings"]] == list(dashboard)
    for row in printed["rankings"]:
        expected = dashboard[row["group"]]
        assert row["bradley_terry"] == pytest.approx(expected.bradley_terry.value, abs=1e-6)
        assert (row["bt_low"], row["bt_high"]) == pytest.approx((expected.bradley_terry.low,
                                                                 expected.bradley_terry.high), abs=1e-6)
        assert row["elo"] == pytest.approx(expected.elo.value, abs=1e-6)
    assert "pairs compare two variants of one model" in printed["counted"]
    csv_text = run("rank_generators", "--experts", "--campaign", CAMPAIGN, "--group-by", "method", "--format", "csv")
    assert csv_text.splitlines()[0] == ",".join(figures.RANKING_CSV_HEADER) and len(csv_text.splitlines()) == 4
    page = client_for(admin_user).get("/admin-tools/agreement/", {"campaign": campaign.pk, "group_by": "model"})
    text = page.content.decode()
    assert "pairs compare two variants of one model" in text and "gpt-4o" in text
    assert f"{expected.bradley_terry.value:.2f}" in text
    download = client_for(admin_user).get("/admin-tools/agreement/rankings.csv",
                                          {"campaign": campaign.pk, "group_by": "model"})
    assert download.status_code == 200 and b"experts,model,gpt-4o" in download.content


def test_the_rankings_csv_is_for_staff_only(client_for, alice):
    assert client_for(alice).get("/admin-tools/agreement/rankings.csv").status_code == 403


def test_the_command_refuses_implied_preferences_for_a_judge(imported):
    with pytest.raises(CommandError, match="--implied counts the preferences of experts' tournaments"):
        run("rank_generators", "--judge", "gpt-4o-judge", "--implied")


def test_counting_implied_preferences_says_so(imported):
    labels = figures.gather(Campaign.objects.get(name=CAMPAIGN))
    plain = figures.expert_matches(labels)
    with_implied = figures.expert_matches(labels, implied=True)
    assert with_implied.implied > 0 and len(with_implied.matches) == len(plain.matches) + with_implied.implied
    assert f"and {with_implied.implied} implied tournament preferences" in figures.counted_text(
        with_implied, "expert vote", None)


# --- Bradley–Terry against fits made another way ---------------------------------------------------------


def test_bradley_terry_matches_a_hand_computed_example():
    # A beats B 3 of 4 and C 3 of 4, B and C never meet: without a prior each gap is the log-odds, ln 3, exactly.
    matches = [("A", "B", 1)] * 3 + [("A", "B", 0)] + [("A", "C", 1)] * 3 + [("C", "A", 1)]
    theta = stats.bradley_terry(matches, prior=0)
    assert theta["A"] - theta["B"] == pytest.approx(math.log(3), abs=1e-5)
    assert theta["A"] - theta["C"] == pytest.approx(math.log(3), abs=1e-5)
    assert theta["A"] == pytest.approx(2 * math.log(3) / 3, abs=1e-5)  # centred: A + B + C = 0
    # A tie is half a win each way: 2 wins and 2 ties of 4 are 3 of 4.
    tied = [("A", "B", 1)] * 2 + [("A", "B", 0.5)] * 2
    gap = stats.bradley_terry(tied, prior=0)
    assert gap["A"] - gap["B"] == pytest.approx(math.log(3), abs=1e-5)


def test_bradley_terry_matches_scikit_learns_penalised_logistic_regression(imported):
    from sklearn.linear_model import LogisticRegression

    labels = figures.gather(Campaign.objects.get(name=CAMPAIGN))
    matches = figures.expert_matches(labels, "model").matches
    ours = stats.bradley_terry(matches)
    items = sorted(ours)
    rows, outcomes, weights = [], [], []
    for x, y, score in matches:
        row = np.zeros(len(items))
        row[items.index(x)], row[items.index(y)] = 1, -1
        for outcome, weight in ((1, score), (0, 1 - score)):
            if weight:
                rows.append(row)
                outcomes.append(outcome)
                weights.append(weight)
    # The same prior: our penalty 0.1·Σθ²/2 is scikit-learn's ½‖w‖²/C with C = 10.
    fit = LogisticRegression(C=10, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(
        np.array(rows), outcomes, sample_weight=weights)
    theirs = fit.coef_[0] - fit.coef_[0].mean()
    assert [ours[i] for i in items] == pytest.approx(list(theirs), abs=1e-4)


# --- one-order verdicts ----------------------------------------------------------------------------------


def test_one_order_verdicts_count_in_agreement_and_rankings_and_say_so(imported, client_for, admin_user):
    study, _ = imported
    campaign = Campaign.objects.get(name=CAMPAIGN)
    labels = figures.gather(campaign)
    (judge,) = figures.judge_behaviour(labels, n_boot=BOOT)
    assert judge.one_order == study.matches and judge.flip_rate.n == 0  # flips not measured, nothing made up
    valid_votes_on_judged = sum(1 for v in labels.votes if v.comparison_id in labels.judge_labels[judge.judge_id])
    assert judge.agreement is not None and judge.agreement.n == valid_votes_on_judged > 0
    ranked = figures.rankings(labels, judge.judge_id, n_boot=BOOT, group_by="model")
    assert all(r.judge is not None for r in ranked.rows) and ranked.judge.matches
    page = client_for(admin_user).get("/admin-tools/agreement/", {"campaign": campaign.pk}).content.decode()
    assert "not measured (one order)" in page and "(one-order)" in page
    assert f"{study.matches} of this judge's comparisons were judged in one presentation order only" in page
    printed = run("rank_generators", "--judge", "gpt-4o-judge", "--campaign", CAMPAIGN, "--group-by", "method")
    assert "judge gpt-4o-judge:" in printed and "chain-of-thought" in printed


def test_a_judge_set_to_one_order_is_asked_one_order_per_comparison_by_a_stable_coin(server):
    from tests.test_judging_server import http_judge, judge_in_process, make_profiles, make_sample

    judge = http_judge(server, orders="one")
    orders = [judge.orders_for(pk)[0] for pk in range(1, 401)]
    assert 150 < orders.count("ab") < 250 and orders == [judge.orders_for(pk)[0] for pk in range(1, 401)]
    make_profiles(make_sample(), [1, 2, 3, 4])
    job = judge_in_process(judge, "all")
    assert job.status == "succeeded", job.error
    assert (job.done, job.total) == (6, 6) and JudgeVerdict.objects.count() == 6
    assert set(JudgeVerdict.objects.values_list("comparison_id", flat=True).distinct()) == set(
        Comparison.objects.values_list("pk", flat=True))
    again = judge_in_process(judge, "all")
    assert JudgeVerdict.objects.count() == 6 and "6 already there" in again.message


def test_exports_use_one_order_verdicts_only_where_the_policy_measured_them(settings, tmp_path, alice):
    from annotation.export.dataset import export_dataset
    from annotation.models import DatasetExport

    settings.MEDIA_ROOT = tmp_path / "media"
    world = World()
    campaign = world.campaign("c")
    judge = world.judge("one-order")
    for choice in ["a", "b", "a", "b", "a", "b"]:
        comparison = world.comparison()
        JudgeVerdict.objects.create(comparison=comparison, judge=judge, order="ba", preferred=choice, is_valid=True)
        world.vote(campaign, comparison, alice, choice)
    unvoted = world.comparison()
    JudgeVerdict.objects.create(comparison=unvoted, judge=judge, order="ab", preferred="a", is_valid=True)

    def export(name, **options):
        item = DatasetExport.objects.create(name=name, test_fraction=0.0, **options)
        export_dataset(item)
        item.refresh_from_db()
        return item

    consensus = export("consensus", policy="judge_consensus")
    assert consensus.counts["dropped"]["one_order"] == 7 and consensus.counts["train"] == 0
    calibrated = export("calibrated", policy="judge_calibrated", kappa_threshold=0.5)
    assert calibrated.counts["sources"] == {"judges": 7} and calibrated.counts["judges_used"] == ["one-order"]


def test_imported_tournaments_are_shown_read_only_to_staff_and_to_nobody_else(imported, client_for, admin_user,
                                                                               alice):
    tournament = Tournament.objects.first()
    staff = client_for(admin_user)
    listing = staff.get("/admin/annotation/tournament/").content.decode()
    assert "Maria_Schmidt" in listing and "11" in listing  # 12 entrants: 11 matches, the bye not counted
    page = staff.get(f"/admin/annotation/tournament/{tournament.pk}/change/")
    assert page.status_code == 200 and "Bye" in page.content.decode()
    assert staff.post(f"/admin/annotation/tournament/{tournament.pk}/change/", {}).status_code == 403
    assert client_for(alice).get("/admin/annotation/tournament/").status_code == 302  # experts: not the admin


def test_generator_attributes_are_text_key_values():
    from annotation.profiles.models import clean_attributes

    assert clean_attributes({"model": "phi-3", "round": 2}) == {"model": "phi-3", "round": "2"}
    for bad in (["model"], {"model": None}, {"": "x"}, {"flag": True}):
        with pytest.raises(ValueError):
            clean_attributes(bad)


def test_an_export_never_trains_on_a_title_only_prompt(imported, settings, tmp_path):
    from annotation.export.dataset import export_dataset
    from annotation.models import DatasetExport

    settings.MEDIA_ROOT = tmp_path / "media"
    item = DatasetExport.objects.create(name="study", policy="expert", test_fraction=0.0,
                                        campaign=Campaign.objects.get(name=CAMPAIGN))
    export_dataset(item)
    item.refresh_from_db()
    assert item.counts["train"] == 0 and item.counts["dropped"]["sample_without_abstracts"] > 0
