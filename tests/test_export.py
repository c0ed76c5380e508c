"""DPO export: policies on hand-built labels, KTO rows, the split, duplicates, frozen snapshots and formats."""

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from annotation.export.dataset import ExportError, SnapshotFrozen, export_dataset, sha256_file, verify_snapshot
from annotation.models import DatasetExport, JudgePanel
from annotation.prompts import build_extraction_messages
from tests.labels_factory import World, profile_text

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def world():
    return World()


def export(name="v1", **options) -> DatasetExport:
    item = DatasetExport.objects.create(name=name, test_fraction=options.pop("test_fraction", 0.0), **options)
    export_dataset(item)
    item.refresh_from_db()
    return item


def rows(item: DatasetExport, split: str = "train") -> list[dict]:
    path = Path(item.path) / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def pairs(item: DatasetExport) -> set[tuple[int, str]]:
    return {(r["comparison_id"], r["decision"]) for r in rows(item) + rows(item, "test")}


@pytest.fixture
def labelled(world, alice, bob, charlie):
    """Comparisons with expert votes and judge verdicts chosen to separate the policies.

    agree:    experts a, a      judges J1 a/a, J2 a/a   → everyone says a
    override: experts b         judges J1 a/a, J2 a/a   → experts b, judges a
    split:    experts a, b      judges J1 b/b, J2 b/b   → no expert majority; judges b
    judges:   no votes          judges J1 b/b, J2 b/b   → judges only
    flipped:  no votes          judges J1 a/b, J2 a/a   → J1 inconsistent
    mixed:    no votes          judges J1 a/a, J2 b/b   → judges disagree
    tie:      experts tie, tie  judges —
    bad:      experts both_bad  judges —
    """
    campaign = world.campaign("c")
    j1, j2 = world.judge("J1"), world.judge("J2")
    plan = {
        "agree": (["a", "a"], ("a", "a"), ("a", "a")), "override": (["b"], ("a", "a"), ("a", "a")),
        "split": (["a", "b"], ("b", "b"), ("b", "b")), "judges": ([], ("b", "b"), ("b", "b")),
        "flipped": ([], ("a", "b"), ("a", "a")), "mixed": ([], ("a", "a"), ("b", "b")),
        "tie": (["tie", "tie"], None, None), "bad": (["both_bad"], None, None),
    }
    made = {}
    for name, (votes, first, second) in plan.items():
        comparison = world.comparison(world.sample(name))
        for expert, choice in zip([alice, bob, charlie], votes):
            world.vote(campaign, comparison, expert, choice)
        if first:
            world.verdicts(comparison, j1, *first)
            world.verdicts(comparison, j2, *second)
        made[name] = comparison.pk
    return made


def test_expert_only_takes_the_experts_majority(labelled):
    item = export(policy="expert")
    assert pairs(item) == {(labelled["agree"], "a"), (labelled["override"], "b")}
    assert item.counts["dropped"] == {"both_bad": 1, "experts_split": 1, "no_votes": 3, "tie": 1}


def test_judge_consensus_needs_every_judge_and_both_orders(labelled):
    item = export(policy="judge_consensus")
    assert pairs(item) == {(labelled["agree"], "a"), (labelled["override"], "a"), (labelled["split"], "b"),
                           (labelled["judges"], "b")}
    assert item.counts["dropped"]["no_consensus"] == 2  # flipped (J1 inconsistent vs J2 a) and mixed


def test_a_panel_threshold_lets_a_majority_decide(labelled, world):
    panel = JudgePanel.objects.create(name="p", threshold=0.5 + 1e-6)
    panel.judges.add(world.judge("J1"))
    item = export(policy="judge_consensus", panel=panel)
    # Only J1 counts: flipped is inconsistent for J1, mixed is a.
    assert (labelled["mixed"], "a") in pairs(item) and item.counts["dropped"]["inconsistent"] == 1


def test_experts_override_the_judges_where_they_voted(labelled):
    item = export(policy="expert_overrides")
    assert pairs(item) == {(labelled["agree"], "a"), (labelled["override"], "b"), (labelled["judges"], "b")}
    assert item.counts["sources"] == {"experts": 2, "judges": 1}


def test_calibrated_judges_must_reach_the_kappa_threshold(labelled, world, alice, bob):
    # J2 agrees with the experts where they voted, J1 is made to disagree on extra comparisons.
    campaign = world.campaign("c")
    j1, j2 = world.judge("J1"), world.judge("J2")
    for choice in ["a", "b", "a", "b"]:
        comparison = world.comparison()
        world.vote(campaign, comparison, alice, choice)
        world.verdicts(comparison, j2, choice, choice)
        world.verdicts(comparison, j1, "b" if choice == "a" else "a", "b" if choice == "a" else "a")
    item = export(policy="judge_calibrated", kappa_threshold=0.3)
    assert item.counts["judges_used"] == ["J2"]
    assert (labelled["mixed"], "b") in pairs(item)  # J2 alone decides where J1 disagreed
    with pytest.raises(ExportError, match="no judge reaches"):
        export("v2", policy="judge_calibrated", kappa_threshold=0.99)
    assert DatasetExport.objects.get(name="v2").status == "failed"


def test_ties_and_both_bad_become_unpaired_negatives_in_kto_format(labelled):
    item = export(policy="expert", ties_as_kto=True)
    by_comparison = {}
    for row in rows(item):
        assert set(row) >= {"prompt", "completion", "label"} and "chosen" not in row
        by_comparison.setdefault(row["comparison_id"], []).append(row["label"])
    assert sorted(by_comparison[labelled["agree"]]) == [False, True]
    assert by_comparison[labelled["tie"]] == [False, False] and by_comparison[labelled["bad"]] == [False, False]


def test_rows_are_trls_conversational_format_with_the_exact_prompt(world, alice):
    sample = world.sample("s", documents=3)
    comparison = world.comparison(sample)
    world.vote(world.campaign("c"), comparison, alice, "b")
    (row,) = rows(export(policy="expert"))
    documents = [(d.title, d.abstract) for d in sample.ordered_documents()]
    assert row["prompt"] == build_extraction_messages(documents)
    assert row["chosen"] == [{"role": "assistant", "content": comparison.profile_b.raw_text}]
    assert row["rejected"] == [{"role": "assistant", "content": comparison.profile_a.raw_text}]
    assert json.loads(row["votes"]) == [{"vote_id": comparison.votes.get().pk, "expert_id": alice.pk, "choice": "b"}]
    assert (row["source"], row["agreement"], row["policy"]) == ("experts", 1.0, "expert")


def test_the_split_is_by_sample_and_held_out_samples_go_to_test(world, alice):
    campaign = world.campaign("c")
    for index in range(30):
        sample = world.sample(f"s{index}", split="heldout" if index < 3 else "train")
        for _ in range(3):
            world.vote(campaign, world.comparison(sample), alice, "a")
    item = export(policy="expert", test_fraction=0.3)
    train, test = {r["sample"] for r in rows(item)}, {r["sample"] for r in rows(item, "test")}
    assert train and test and not train & test
    assert {"s0", "s1", "s2"} <= test
    assert item.counts["train"] + item.counts["test"] == 90


def test_identical_pairs_are_written_once(world, alice):
    sample = world.sample("s")
    campaign = world.campaign("c")
    same_a, same_b = profile_text("Biology", "Cell culture", "Imaging", "Statistics"), profile_text("X", "A", "B", "C")
    for _ in range(2):
        world.vote(campaign, world.comparison(sample, text_a=same_a, text_b=same_b), alice, "a")
    item = export(policy="expert")
    assert item.counts["train"] == 1 and item.counts["dropped"]["duplicate_rows"] == 1


def test_an_invalid_profile_is_never_the_chosen_one(world, alice):
    comparison = world.comparison()
    comparison.profile_a.is_valid, comparison.profile_a.invalid_reason = False, "junk"
    comparison.profile_a.save()
    world.vote(world.campaign("c"), comparison, alice, "a")
    assert export(policy="expert").counts["dropped"] == {"invalid_chosen_profile": 1}


def test_a_sample_without_documents_gives_no_prompt_and_no_rows(world, alice):
    campaign = world.campaign("c")
    world.vote(campaign, world.comparison(world.sample("bare", documents=0)), alice, "a")
    world.vote(campaign, world.comparison(world.sample("with abstracts")), alice, "a")
    item = export(policy="expert")
    assert item.counts["train"] == 1 and item.counts["dropped"] == {"sample_without_abstracts": 1}


def test_a_snapshot_is_frozen_and_its_checksums_match(labelled, world, alice, bob):
    item = export(policy="expert")
    folder = Path(item.path)
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    assert set(before) == {"train.jsonl", "test.jsonl", "README.md", "SHA256SUMS"}
    assert verify_snapshot(item)
    assert item.counts["files"]["train.jsonl"]["sha256"] == before["train.jsonl"]
    # Later votes make the next export differ, never this one.
    world.vote(world.campaign("c"), world.comparison(), alice, "a")
    with pytest.raises(SnapshotFrozen):
        export_dataset(item)
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before
    assert export("v2", policy="expert").counts["train"] == item.counts["train"] + 1
    assert verify_snapshot(item)


def test_the_card_has_counts_policy_and_agreement(labelled):
    item = export(policy="expert_overrides")
    card = (Path(item.path) / "README.md").read_text()
    assert card == item.card
    assert "Expert overrides judge" in card and "| train | 3 |" in card and "Krippendorff" in card
    assert "| J1 |" in card and "path: train.jsonl" in card


def test_a_campaign_export_uses_only_that_campaigns_votes(world, alice):
    mine, other = world.campaign("mine"), world.campaign("other")
    kept, ignored = world.comparison(), world.comparison()
    world.vote(mine, kept, alice, "a")
    world.vote(other, ignored, alice, "a")
    assert pairs(export(policy="expert", campaign=mine)) == {(kept.pk, "a")}


def test_parquet_and_hf_exports_load_with_datasets(labelled, tmp_path):
    import datasets

    parquet = export("p", policy="expert_overrides", format="parquet")
    loaded = datasets.load_dataset(str(parquet.path), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 3 and loaded[0]["prompt"][0]["role"] == "system"
    hf = export("h", policy="expert_overrides", format="hf", ties_as_kto=True)
    splits = datasets.load_from_disk(hf.path)
    assert splits["train"].num_rows == hf.counts["train"] and "completion" in splits["train"].column_names
    assert verify_snapshot(hf)


def test_the_jsonl_exports_load_with_datasets_load_dataset(labelled, tmp_path):
    import datasets

    dpo = export("dpo", policy="expert_overrides")
    loaded = datasets.load_dataset("json", data_files=str(Path(dpo.path) / "train.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 3 and set(loaded.column_names) >= {"prompt", "chosen", "rejected", "votes"}
    kto = export("kto", policy="expert", ties_as_kto=True)
    loaded = datasets.load_dataset("json", data_files=str(Path(kto.path) / "train.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == kto.counts["train"] and loaded.features["label"].dtype == "bool"


def test_the_command_writes_a_snapshot_where_asked(labelled, tmp_path):
    out = tmp_path / "snapshot"
    call_command("export_dpo", "--policy", "expert", "--format", "jsonl", "--out", str(out), "--campaign", "c",
                 "--test-fraction", "0", "--ties", "kto", "--name", "cli", "--no-progress")
    item = DatasetExport.objects.get(name="cli")
    assert item.path == str(out) and item.ties_as_kto and item.campaign.name == "c"
    assert verify_snapshot(item) and (out / "train.jsonl").exists()


def test_the_export_reads_in_a_constant_number_of_queries(world, alice, django_assert_max_num_queries):
    campaign = world.campaign("c")
    for index in range(40):
        world.vote(campaign, world.comparison(world.sample(f"s{index}")), alice, "a")
    item = DatasetExport.objects.create(name="q", policy="expert", test_fraction=0)
    with django_assert_max_num_queries(25):
        export_dataset(item)
    assert DatasetExport.objects.get(pk=item.pk).counts["train"] == 40


def test_an_export_into_a_folder_that_is_not_empty_fails_and_says_why(labelled, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    item = DatasetExport.objects.create(name="v1", policy="expert")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_dataset(item, out_dir=tmp_path / "taken")
    item.refresh_from_db()
    assert item.status == "failed" and "not an empty folder" in item.error
    assert (tmp_path / "taken" / "file").read_text() == "mine"
