"""The export streams: queries per batch of samples (never per row), and the same bytes however the rows
are cut into batches and row groups."""

from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation.export import dataset as export_module
from annotation.export.dataset import export_dataset
from annotation.models import DatasetExport
from tests.labels_factory import World
from tests.test_export_bytes import golden  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def make_samples(world: World, campaign, expert, count: int, comparisons: int) -> None:
    for _ in range(count):
        sample = world.sample()
        for index in range(comparisons):
            comparison = world.comparison(sample)
            world.vote(campaign, comparison, expert, "a" if index % 2 else "b")
            world.verdicts(comparison, "J1", "a", "a")


def queries_of_an_export(name: str, **options) -> int:
    item = DatasetExport.objects.create(name=name, test_fraction=0.5, **options)
    with CaptureQueriesContext(connection) as queries:
        export_dataset(item)
    return len(queries)


@pytest.mark.django_db
def test_queries_grow_with_batches_of_samples_not_with_rows(alice, monkeypatch):
    monkeypatch.setattr(export_module, "BATCH_SAMPLES", 4)
    world, campaign = World(), World().campaign("c")
    make_samples(world, campaign, alice, count=4, comparisons=1)
    one_batch = queries_of_an_export("a", policy="expert_overrides")
    make_samples(world, campaign, alice, count=4, comparisons=1)
    two_batches = queries_of_an_export("b", policy="expert_overrides")
    make_samples(world, campaign, alice, count=4, comparisons=5)  # five times the rows per sample
    three_batches = queries_of_an_export("c", policy="expert_overrides", ties_as_kto=True)
    per_batch = two_batches - one_batch
    assert 0 < per_batch <= 8
    assert three_batches - two_batches == per_batch
    assert DatasetExport.objects.get(name="c").counts["comparisons"] == 28


def file_hashes(item: DatasetExport) -> dict[str, str]:
    return {name: info["sha256"] for name, info in item.counts["files"].items() if name != "README.md"}


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("kto", [False, True])
def test_batches_chunks_and_row_groups_do_not_change_the_bytes(golden, monkeypatch, fmt, kto):  # noqa: F811
    options = dict(policy="expert_overrides", format=fmt, ties_as_kto=kto, test_fraction=0.75)
    whole = DatasetExport.objects.create(name="whole", **options)
    export_dataset(whole)
    # One sample per batch, a row group per row.
    monkeypatch.setattr(export_module, "BATCH_SAMPLES", 1)
    monkeypatch.setattr(export_module, "ROW_GROUP_ROWS", 1)
    cut = DatasetExport.objects.create(name="cut", **options)
    export_dataset(cut)
    whole.refresh_from_db()
    cut.refresh_from_db()
    assert whole.counts["train"] and whole.counts["test"]
    if fmt == "jsonl":
        assert file_hashes(cut) == file_hashes(whole)
    else:  # the row groups differ, the rows do not
        import pyarrow.parquet as pq

        for split in ("train", "test"):
            assert (pq.read_table(Path(cut.path) / f"{split}.parquet").to_pylist()
                    == pq.read_table(Path(whole.path) / f"{split}.parquet").to_pylist())
    assert {k: v for k, v in cut.counts.items() if k != "files"} == {
        k: v for k, v in whole.counts.items() if k != "files"}
