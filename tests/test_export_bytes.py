"""The exported files, byte for byte: a snapshot's bytes must not change when the export code does.

The world below is built with fixed primary keys, so every id in the rows is known. Texts carry what an
encoder may write differently: quotes, backslashes, newlines, tabs, a control character, non-ASCII
letters, an emoji, U+2028, and markup. Each sample's prompt is pinned as ``orjson.dumps(messages)`` of the
extraction messages (the prompt's own text belongs to annotation.prompts), everything else in the line is
pinned literally: compact JSON, UTF-8, as orjson writes it.
"""

import hashlib
import json
from pathlib import Path

import orjson
import pytest

from annotation.export.dataset import export_dataset
from annotation.models import (
    Assignment, Campaign, CampaignItem, Comparison, DatasetExport, Document, Generator, Judge, JudgeVerdict, Profile,
    Sample, SampleDocument, Vote,
)
from annotation.prompts import build_extraction_messages

pytestmark = pytest.mark.django_db

TRICKY = 'Quotes " and \\ backslash,\nnewline,\ttab, \x01 control, é ü ß — “curly” 🧬 \u2028 <b>bold</b> & more'


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def golden(django_user_model):
    """Three samples: two for training, one held out (test split); pairs decided by experts and by judges,
    a tie, a duplicate pair, an invalid chosen profile, and a sample whose pairs all drop."""
    experts = [django_user_model.objects.create(pk=7100 + i, username=f"golden-{i}") for i in range(3)]
    generators = [Generator.objects.create(pk=7200 + i, name=f"golden-gen-{i}") for i in range(2)]
    judges = [Judge.objects.create(pk=7300, name="J-α", model="m"), Judge.objects.create(pk=7301, name="J2", model="m")]
    campaign = Campaign.objects.create(pk=7400, name="golden")
    texts = {
        7500: [("Title 1", "Plain abstract one."), ("Tïtle 2 “quoted”", TRICKY)],
        7501: [("T3", "Third\nabstract\r\nwith CRLF."), ("T4", "Fourth.")],
        7502: [("Held out", "Abstract of the held-out sample.")],
    }
    doc = 7600
    for sample_id, abstracts in texts.items():
        sample = Sample.objects.create(pk=sample_id, name=f"s-{sample_id} “ü”",
                                       split="heldout" if sample_id == 7502 else "train")
        for position, (title, abstract) in enumerate(abstracts):
            document = Document.objects.create(pk=doc, external_id=f"golden-{doc}", title=title, abstract=abstract,
                                               content_hash="x")
            SampleDocument.objects.create(pk=doc, sample=sample, document=document, position=position)
            doc += 1
    profile_texts = [
        'Domain: "Biology"\n\nCompetencies:\n- Folding: shown.',
        'Domain: "Chemistry é"\n\nCompetencies:\n- Docking: ' + TRICKY,
        "def f():\n    return 1",
        'Domain: "Statistics"\n\nCompetencies:\n- Survival \\ analysis: "quoted".',
    ]
    profile_texts += profile_texts[:2]  # candidates 4 and 5 repeat 0 and 1 word for word
    profiles = {}
    pid = 7700
    for sample_id in texts:
        for index, text in enumerate(profile_texts):
            profiles[sample_id, index] = Profile.objects.create(
                pk=pid, sample_id=sample_id, generator=generators[index % 2], candidate_index=index, raw_text=text,
                is_valid=index != 2, invalid_reason="" if index != 2 else "code")
            pid += 1
    ids = {"comparison": 7800, "vote": 7900, "verdict": 8000}

    def comparison(sample_id, a, b, votes=(), verdicts=()):
        c = Comparison.objects.create(pk=ids["comparison"], sample_id=sample_id, profile_a=profiles[sample_id, a],
                                      profile_b=profiles[sample_id, b])
        ids["comparison"] += 1
        item = CampaignItem.objects.create(pk=c.pk, campaign=campaign, comparison=c)
        for expert, choice in zip(experts, votes):
            assignment = Assignment.objects.create(pk=ids["vote"], item=item, expert=expert)
            Vote.objects.create(pk=ids["vote"], assignment=assignment, expert=expert, comparison=c,
                                campaign=assignment.item.campaign, choice=choice,
                                first_choice=choice, seconds_spent=12.5)
            ids["vote"] += 1
        for judge, (ab, ba) in zip(judges, verdicts):
            for order, label in (("ab", ab), ("ba", ba)):
                JudgeVerdict.objects.create(pk=ids["verdict"], comparison=c, judge=judge, order=order,
                                            preferred=label or "", is_valid=label is not None,
                                            raw_text="{}" if label else "junk")
                ids["verdict"] += 1

    comparison(7500, 0, 1, votes=["a", "a", "b"], verdicts=[("b", "b")])  # experts 2:1 override the judge
    comparison(7500, 1, 3, verdicts=[("b", "b"), ("b", None)])  # judges only
    comparison(7500, 4, 5, votes=["a"])  # the same texts again: a duplicate row
    comparison(7500, 0, 3, votes=["tie", "tie"])  # a tie: KTO negatives only
    comparison(7500, 2, 3, votes=["a"])  # the invalid profile would be chosen: dropped
    comparison(7501, 1, 3, votes=["b", "both_bad", "b"], verdicts=[("a", "a"), ("b", "b")])
    comparison(7501, 0, 3, verdicts=[("a", "b"), ("a", "a")])  # J-α flips: no consensus
    comparison(7501, 0, 1, verdicts=[("tie", "tie"), ("tie", "tie")])
    comparison(7502, 1, 3, votes=["both_bad"], verdicts=[("a", "a")])
    comparison(7502, 0, 1, votes=["b", "b"])
    return texts


EXPORTS = {  # name → options; 0.75 puts sample 7500 in test and 7501 in train (their prompts hash to 0.71, 0.82)
    "dpo": dict(policy="expert_overrides", test_fraction=0.75),
    "kto": dict(policy="expert", ties_as_kto=True, test_fraction=0.0),
    "judges": dict(policy="judge_consensus", test_fraction=0.0),
}


def export(name: str, **options) -> DatasetExport:
    item = DatasetExport.objects.create(name=name, **options)
    export_dataset(item)
    item.refresh_from_db()
    return item


def pinned(item: DatasetExport, split: str, texts) -> str:
    """The file's text with each sample's prompt JSON replaced by a placeholder, after checking the prompt is
    exactly ``orjson.dumps(messages)``; U+2028 is written <LS> to keep this file plain."""
    data = (Path(item.path) / f"{split}.jsonl").read_bytes()
    assert item.counts["files"][f"{split}.jsonl"]["sha256"] == hashlib.sha256(data).hexdigest()
    text = data.decode()
    for sample_id, abstracts in texts.items():
        text = text.replace(orjson.dumps(build_extraction_messages(abstracts)).decode(), f"<PROMPT {sample_id}>")
    assert '"prompt":[' not in text  # every prompt was one of the expected ones
    return text.replace("\u2028", "<LS>")


@pytest.mark.parametrize("name", EXPORTS)
def test_jsonl_exports_are_byte_for_byte_the_pinned_text(golden, name):
    item = export(name, **EXPORTS[name])
    for split in ("train", "test"):
        assert pinned(item, split, golden) == GOLDEN[name][split], f"{name} {split}.jsonl"


@pytest.mark.parametrize("kto", [False, True])
def test_parquet_exports_are_the_bytes_pyarrow_writes_for_the_jsonl_rows(golden, kto):
    """The Parquet file is exactly what pyarrow writes for the JSONL export's rows, in one row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from annotation.export.dataset import _arrow_schema

    options = dict(policy="expert_overrides", ties_as_kto=kto, test_fraction=0.75)
    jsonl = export("j", **options)
    parquet = export("p", format="parquet", **options)
    for split in ("train", "test"):
        text = (Path(jsonl.path) / f"{split}.jsonl").read_text()
        rows = [json.loads(line) for line in text.split("\n") if line]  # not splitlines(): U+2028 is no break
        sink = pa.BufferOutputStream()
        with pq.ParquetWriter(sink, _arrow_schema(kto), compression="zstd") as writer:
            writer.write_table(pa.Table.from_pylist(rows, schema=_arrow_schema(kto)))
        written = (Path(parquet.path) / f"{split}.parquet").read_bytes()
        assert pq.read_table(Path(parquet.path) / f"{split}.parquet").to_pylist() == rows
        assert written == sink.getvalue().to_pybytes(), f"{split}.parquet"


# What the exports above write (regenerate only for a deliberate change of format, never for speed).
GOLDEN = {
    'dpo': {
        'train': r'''
{"prompt":<PROMPT 7501>,"chosen":[{"role":"assistant","content":"Domain: \"Statistics\"\n\nCompetencies:\n- Survival \\ analysis: \"quoted\"."}],"rejected":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"chosen_profile_id":7709,"rejected_profile_id":7707,"comparison_id":7805,"sample":"s-7501 “ü”","decision":"b","source":"experts","agreement":0.6666666666666666,"votes":"[{\"vote_id\":7907,\"expert_id\":7100,\"choice\":\"b\"},{\"vote_id\":7908,\"expert_id\":7101,\"choice\":\"both_bad\"},{\"vote_id\":7909,\"expert_id\":7102,\"choice\":\"b\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"a\",\"ba\":\"a\",\"verdict\":\"a\"},{\"judge\":\"J2\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"}]","policy":"expert_overrides"}
'''[1:],
        'test': r'''
{"prompt":<PROMPT 7500>,"chosen":[{"role":"assistant","content":"Domain: \"Biology\"\n\nCompetencies:\n- Folding: shown."}],"rejected":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"chosen_profile_id":7700,"rejected_profile_id":7701,"comparison_id":7800,"sample":"s-7500 “ü”","decision":"a","source":"experts","agreement":0.6666666666666666,"votes":"[{\"vote_id\":7900,\"expert_id\":7100,\"choice\":\"a\"},{\"vote_id\":7901,\"expert_id\":7101,\"choice\":\"a\"},{\"vote_id\":7902,\"expert_id\":7102,\"choice\":\"b\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"}]","policy":"expert_overrides"}
{"prompt":<PROMPT 7500>,"chosen":[{"role":"assistant","content":"Domain: \"Statistics\"\n\nCompetencies:\n- Survival \\ analysis: \"quoted\"."}],"rejected":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"chosen_profile_id":7703,"rejected_profile_id":7701,"comparison_id":7801,"sample":"s-7500 “ü”","decision":"b","source":"judges","agreement":1.0,"votes":"[]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"},{\"judge\":\"J2\",\"ab\":\"b\",\"ba\":null,\"verdict\":\"invalid\"}]","policy":"expert_overrides"}
{"prompt":<PROMPT 7502>,"chosen":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"rejected":[{"role":"assistant","content":"Domain: \"Biology\"\n\nCompetencies:\n- Folding: shown."}],"chosen_profile_id":7713,"rejected_profile_id":7712,"comparison_id":7809,"sample":"s-7502 “ü”","decision":"b","source":"experts","agreement":1.0,"votes":"[{\"vote_id\":7911,\"expert_id\":7100,\"choice\":\"b\"},{\"vote_id\":7912,\"expert_id\":7101,\"choice\":\"b\"}]","verdicts":"[]","policy":"expert_overrides"}
'''[1:],
    },
    'kto': {
        'train': r'''
{"prompt":<PROMPT 7500>,"completion":[{"role":"assistant","content":"Domain: \"Biology\"\n\nCompetencies:\n- Folding: shown."}],"label":true,"profile_id":7700,"comparison_id":7800,"sample":"s-7500 “ü”","decision":"a","source":"experts","agreement":0.6666666666666666,"votes":"[{\"vote_id\":7900,\"expert_id\":7100,\"choice\":\"a\"},{\"vote_id\":7901,\"expert_id\":7101,\"choice\":\"a\"},{\"vote_id\":7902,\"expert_id\":7102,\"choice\":\"b\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"}]","policy":"expert"}
{"prompt":<PROMPT 7500>,"completion":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"label":false,"profile_id":7701,"comparison_id":7800,"sample":"s-7500 “ü”","decision":"a","source":"experts","agreement":0.6666666666666666,"votes":"[{\"vote_id\":7900,\"expert_id\":7100,\"choice\":\"a\"},{\"vote_id\":7901,\"expert_id\":7101,\"choice\":\"a\"},{\"vote_id\":7902,\"expert_id\":7102,\"choice\":\"b\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"}]","policy":"expert"}
{"prompt":<PROMPT 7500>,"completion":[{"role":"assistant","content":"Domain: \"Biology\"\n\nCompetencies:\n- Folding: shown."}],"label":false,"profile_id":7700,"comparison_id":7803,"sample":"s-7500 “ü”","decision":"tie","source":"experts","agreement":1.0,"votes":"[{\"vote_id\":7904,\"expert_id\":7100,\"choice\":\"tie\"},{\"vote_id\":7905,\"expert_id\":7101,\"choice\":\"tie\"}]","verdicts":"[]","policy":"expert"}
{"prompt":<PROMPT 7500>,"completion":[{"role":"assistant","content":"Domain: \"Statistics\"\n\nCompetencies:\n- Survival \\ analysis: \"quoted\"."}],"label":false,"profile_id":7703,"comparison_id":7803,"sample":"s-7500 “ü”","decision":"tie","source":"experts","agreement":1.0,"votes":"[{\"vote_id\":7904,\"expert_id\":7100,\"choice\":\"tie\"},{\"vote_id\":7905,\"expert_id\":7101,\"choice\":\"tie\"}]","verdicts":"[]","policy":"expert"}
{"prompt":<PROMPT 7501>,"completion":[{"role":"assistant","content":"Domain: \"Statistics\"\n\nCompetencies:\n- Survival \\ analysis: \"quoted\"."}],"label":true,"profile_id":7709,"comparison_id":7805,"sample":"s-7501 “ü”","decision":"b","source":"experts","agreement":0.6666666666666666,"votes":"[{\"vote_id\":7907,\"expert_id\":7100,\"choice\":\"b\"},{\"vote_id\":7908,\"expert_id\":7101,\"choice\":\"both_bad\"},{\"vote_id\":7909,\"expert_id\":7102,\"choice\":\"b\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"a\",\"ba\":\"a\",\"verdict\":\"a\"},{\"judge\":\"J2\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"}]","policy":"expert"}
{"prompt":<PROMPT 7501>,"completion":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"label":false,"profile_id":7707,"comparison_id":7805,"sample":"s-7501 “ü”","decision":"b","source":"experts","agreement":0.6666666666666666,"votes":"[{\"vote_id\":7907,\"expert_id\":7100,\"choice\":\"b\"},{\"vote_id\":7908,\"expert_id\":7101,\"choice\":\"both_bad\"},{\"vote_id\":7909,\"expert_id\":7102,\"choice\":\"b\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"a\",\"ba\":\"a\",\"verdict\":\"a\"},{\"judge\":\"J2\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"}]","policy":"expert"}
'''[1:],
        'test': r'''
{"prompt":<PROMPT 7502>,"completion":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"label":false,"profile_id":7713,"comparison_id":7808,"sample":"s-7502 “ü”","decision":"both_bad","source":"experts","agreement":1.0,"votes":"[{\"vote_id\":7910,\"expert_id\":7100,\"choice\":\"both_bad\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"a\",\"ba\":\"a\",\"verdict\":\"a\"}]","policy":"expert"}
{"prompt":<PROMPT 7502>,"completion":[{"role":"assistant","content":"Domain: \"Statistics\"\n\nCompetencies:\n- Survival \\ analysis: \"quoted\"."}],"label":false,"profile_id":7715,"comparison_id":7808,"sample":"s-7502 “ü”","decision":"both_bad","source":"experts","agreement":1.0,"votes":"[{\"vote_id\":7910,\"expert_id\":7100,\"choice\":\"both_bad\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"a\",\"ba\":\"a\",\"verdict\":\"a\"}]","policy":"expert"}
{"prompt":<PROMPT 7502>,"completion":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"label":true,"profile_id":7713,"comparison_id":7809,"sample":"s-7502 “ü”","decision":"b","source":"experts","agreement":1.0,"votes":"[{\"vote_id\":7911,\"expert_id\":7100,\"choice\":\"b\"},{\"vote_id\":7912,\"expert_id\":7101,\"choice\":\"b\"}]","verdicts":"[]","policy":"expert"}
{"prompt":<PROMPT 7502>,"completion":[{"role":"assistant","content":"Domain: \"Biology\"\n\nCompetencies:\n- Folding: shown."}],"label":false,"profile_id":7712,"comparison_id":7809,"sample":"s-7502 “ü”","decision":"b","source":"experts","agreement":1.0,"votes":"[{\"vote_id\":7911,\"expert_id\":7100,\"choice\":\"b\"},{\"vote_id\":7912,\"expert_id\":7101,\"choice\":\"b\"}]","verdicts":"[]","policy":"expert"}
'''[1:],
    },
    'judges': {
        'train': r'''
{"prompt":<PROMPT 7500>,"chosen":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"rejected":[{"role":"assistant","content":"Domain: \"Biology\"\n\nCompetencies:\n- Folding: shown."}],"chosen_profile_id":7701,"rejected_profile_id":7700,"comparison_id":7800,"sample":"s-7500 “ü”","decision":"b","source":"judges","agreement":1.0,"votes":"[{\"vote_id\":7900,\"expert_id\":7100,\"choice\":\"a\"},{\"vote_id\":7901,\"expert_id\":7101,\"choice\":\"a\"},{\"vote_id\":7902,\"expert_id\":7102,\"choice\":\"b\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"}]","policy":"judge_consensus"}
{"prompt":<PROMPT 7500>,"chosen":[{"role":"assistant","content":"Domain: \"Statistics\"\n\nCompetencies:\n- Survival \\ analysis: \"quoted\"."}],"rejected":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"chosen_profile_id":7703,"rejected_profile_id":7701,"comparison_id":7801,"sample":"s-7500 “ü”","decision":"b","source":"judges","agreement":1.0,"votes":"[]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"b\",\"ba\":\"b\",\"verdict\":\"b\"},{\"judge\":\"J2\",\"ab\":\"b\",\"ba\":null,\"verdict\":\"invalid\"}]","policy":"judge_consensus"}
'''[1:],
        'test': r'''
{"prompt":<PROMPT 7502>,"chosen":[{"role":"assistant","content":"Domain: \"Chemistry é\"\n\nCompetencies:\n- Docking: Quotes \" and \\ backslash,\nnewline,\ttab, \u0001 control, é ü ß — “curly” 🧬 <LS> <b>bold</b> & more"}],"rejected":[{"role":"assistant","content":"Domain: \"Statistics\"\n\nCompetencies:\n- Survival \\ analysis: \"quoted\"."}],"chosen_profile_id":7713,"rejected_profile_id":7715,"comparison_id":7808,"sample":"s-7502 “ü”","decision":"a","source":"judges","agreement":1.0,"votes":"[{\"vote_id\":7910,\"expert_id\":7100,\"choice\":\"both_bad\"}]","verdicts":"[{\"judge\":\"J-α\",\"ab\":\"a\",\"ba\":\"a\",\"verdict\":\"a\"}]","policy":"judge_consensus"}
'''[1:],
    },
}
