"""bench/demo_training.py's simulated expert: exactly the valid-vs-invalid pairs get a vote, for the valid one."""

from __future__ import annotations

import json

from annotation.export.dataset import export_dataset
from annotation.documents.labels import import_votes
from annotation.models import Campaign, DatasetExport, ExportPolicy, Generator, Profile, Vote
from bench.demo_training import SIMULATED_CAMPAIGN, SIMULATED_EXPERT, simulated_expert_labels
from tests.labels_factory import World


def test_only_valid_vs_invalid_pairs_are_labelled_and_exported_with_the_valid_one_chosen(db, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = World()
    sample, other = world.sample(), world.sample()
    for valid in (True, False, True, False, True):  # 3 valid x 2 invalid = 6 labelled pairs
        world.profile(sample, "demo", valid=valid)
    for valid in (True, True):  # nothing to label here
        world.profile(other, "demo", valid=valid)
    world.profile(sample, "someone else", valid=True)  # another generator's profile is never paired
    generator = Generator.objects.get(name="demo")

    rows, counts = simulated_expert_labels(generator, [sample, other])
    assert counts == {"labelled": 6, "both_valid": 3 + 1, "both_invalid": 1}
    path = tmp_path / "votes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert import_votes(path, SIMULATED_CAMPAIGN).outcomes == {"votes": 6}

    valid_ids = set(Profile.objects.filter(generator=generator, is_valid=True).values_list("pk", flat=True))
    votes = Vote.objects.select_related("comparison", "expert")
    assert {v.expert.username for v in votes} == {SIMULATED_EXPERT}
    for vote in votes:
        chosen = vote.comparison.profile_a_id if vote.choice == "a" else vote.comparison.profile_b_id
        rejected = vote.comparison.profile_b_id if vote.choice == "a" else vote.comparison.profile_a_id
        assert chosen in valid_ids and rejected not in valid_ids

    export = DatasetExport.objects.create(name="sim", policy=ExportPolicy.EXPERT, test_fraction=0.0,
                                          campaign=Campaign.objects.get(name=SIMULATED_CAMPAIGN))
    export_dataset(export)
    lines = [json.loads(line) for line in (tmp_path / "media" / "exports").glob("*/train.jsonl").__next__()
             .read_text().splitlines()]
    assert len(lines) == 6
    assert all(row["chosen_profile_id"] in valid_ids and row["rejected_profile_id"] not in valid_ids
               for row in lines)
