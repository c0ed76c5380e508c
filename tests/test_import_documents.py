import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotation.documents.importing import ImportFailed, ImportOptions, heldout_for, import_documents
from annotation.models import Document, Sample, SampleDocument, Split

pytestmark = pytest.mark.django_db


def doc(i: int, **overrides) -> dict:
    row = {"id": f"d{i}", "title": f"Title {i}", "abstract": f"Abstract text {i}.", "authors": ["Ada Lovelace"],
           "year": 2020}
    row.update(overrides)
    return row


def write_jsonl(tmp_path, rows, name="docs.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def counts():
    return Document.objects.count(), Sample.objects.count(), SampleDocument.objects.count()


def failure(path, options=None) -> str:
    with pytest.raises(ImportFailed) as info:
        import_documents(path, options)
    assert counts() == (0, 0, 0), "a bad file must write nothing"
    return info.value.report()


def test_it_imports_jsonl_with_explicit_samples(tmp_path):
    path = write_jsonl(tmp_path, [doc(1, sample="s1"), doc(2, sample="s1"), doc(3, sample="s2")])
    result = import_documents(path)
    assert result.documents_created == 3
    assert counts() == (3, 2, 3)
    s1 = Sample.objects.get(name="s1")
    assert [d.external_id for d in s1.ordered_documents()] == ["d1", "d2"]


def test_reimporting_the_same_file_changes_nothing(tmp_path):
    path = write_jsonl(tmp_path, [doc(i, authors=[f"A{i % 2}"]) for i in range(7)])
    options = ImportOptions(group_by="author", sample_size=2, heldout_fraction=0.5)
    import_documents(path, options)
    before = (counts(), list(Sample.objects.values_list("name", "split")),
              list(SampleDocument.objects.values_list("sample__name", "document__external_id", "position")))
    result = import_documents(path, options)
    after = (counts(), list(Sample.objects.values_list("name", "split")),
             list(SampleDocument.objects.values_list("sample__name", "document__external_id", "position")))
    assert after == before
    assert (result.documents_created, result.documents_unchanged, result.memberships_created) == (0, 7, 0)


def test_group_by_author_builds_samples_of_the_given_size(tmp_path):
    rows = [doc(i, authors=["Grace Hopper", "Someone Else"]) for i in range(5)] + [doc(9, authors=["Alan Turing"])]
    import_documents(write_jsonl(tmp_path, rows), ImportOptions(group_by="author", sample_size=2))
    sizes = {s.name: s.documents.count() for s in Sample.objects.all()}
    assert sizes == {"Grace Hopper #1": 2, "Grace Hopper #2": 2, "Grace Hopper #3": 1, "Alan Turing #1": 1}


def test_samples_are_created_in_the_order_the_file_names_them(tmp_path):
    # Sample ids decide the order (and so the seeds) of generation batches: they must not depend on hashing.
    names = [f"author {n}" for n in (5, 1, 9, 3, 7, 2, 8)]
    rows = [doc(i, authors=[name]) for i, name in enumerate(names)]
    import_documents(write_jsonl(tmp_path, rows), ImportOptions(group_by="author"))
    assert list(Sample.objects.order_by("pk").values_list("name", flat=True)) == [f"{name} #1" for name in names]


def test_heldout_split_is_reproducible_per_sample_name(tmp_path):
    rows = [doc(i, sample=f"s{i}") for i in range(40)]
    import_documents(write_jsonl(tmp_path, rows), ImportOptions(heldout_fraction=0.3))
    heldout = set(Sample.objects.filter(split=Split.HELDOUT).values_list("name", flat=True))
    assert heldout == {f"s{i}" for i in range(40) if heldout_for(f"s{i}", 0.3)}
    assert 4 <= len(heldout) <= 20, "about 30% of 40 samples"


def test_it_imports_csv_with_semicolon_authors_and_multiline_abstracts(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text('id,title,abstract,authors,year,sample\n'
                    'c1,First,"Line one\nline two",Ada Lovelace; Charles Babbage,1843,s\n'
                    'c2,Second,Plain,Ada Lovelace,,s\n')
    import_documents(path)
    first = Document.objects.get(external_id="c1")
    assert first.authors == ["Ada Lovelace", "Charles Babbage"]
    assert first.abstract == "Line one\nline two"
    assert Document.objects.get(external_id="c2").year is None


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"id": "x", "title": "T"', "line 2: invalid JSON"),
        (json.dumps(doc(5, title="")), "line 2, field 'title': empty"),
        (json.dumps({k: v for k, v in doc(5).items() if k != "abstract"}), "line 2, field 'abstract': missing"),
        (json.dumps(doc(5, year="2020")), "line 2, field 'year': expected a year"),
        (json.dumps(doc(5, authors="Ada Lovelace")), "line 2, field 'authors': expected a list"),
        (json.dumps(doc(5, title=42)), "line 2, field 'title': expected text, got int"),
        (json.dumps(doc(5, authors=[])), "line 2, field 'authors': empty"),
        (json.dumps([1, 2]), "line 2: expected a JSON object"),
        (json.dumps(doc(1, title="Other title")), "line 2, field 'id': duplicate id 'd1' with different content"),
    ],
)
def test_a_bad_jsonl_line_imports_nothing_and_says_where(tmp_path, line, expected):
    report = failure(write_jsonl(tmp_path, [doc(1), line, doc(3)]))
    assert "docs.jsonl, " + expected in report


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    report = failure(write_jsonl(tmp_path, [doc(1, title=""), doc(2), "not json", doc(4, year=-3)]))
    assert "line 1, field 'title'" in report and "line 3: invalid JSON" in report and "line 4, field 'year'" in report
    assert "3 problem(s)" in report


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(json.dumps(doc(1)).encode() + b"\n" + b'{"id": "d2", "title": "caf\xe9"}\n')
    assert "line 2: not UTF-8 (byte 27 is 0xe9)" in failure(path)


def test_csv_with_wrong_headers_is_rejected(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,titel,abstract,authors\nx,T,A,B\n")
    assert "line 1, field 'title': CSV header lacks column(s) title" in failure(path)


def test_csv_row_with_too_many_values_is_rejected(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text("id,title,abstract,authors\nx,T,A,B\ny,T,A,B,extra\n")
    assert "line 3: 1 more value(s) than there are columns" in failure(path)


def test_an_id_already_imported_with_other_content_is_rejected(tmp_path):
    import_documents(write_jsonl(tmp_path, [doc(1)], name="first.jsonl"))
    with pytest.raises(ImportFailed) as info:
        import_documents(write_jsonl(tmp_path, [doc(2), doc(1, abstract="Changed.")], name="second.jsonl"))
    assert "line 2, field 'id': id 'd1' is already imported with different content" in info.value.report()
    assert list(Document.objects.values_list("external_id", flat=True)) == ["d1"], "d2 must be rolled back too"


def test_an_empty_file_is_an_error(tmp_path):
    assert "holds no records" in failure(write_jsonl(tmp_path, [""]))


def test_the_command_reports_problems_as_a_command_error(tmp_path):
    path = write_jsonl(tmp_path, [doc(1, title="")])
    with pytest.raises(CommandError, match="line 1, field 'title': empty"):
        call_command("import_documents", str(path))


def test_the_command_imports_and_prints_a_summary(tmp_path):
    out = StringIO()
    path = write_jsonl(tmp_path, [doc(i, authors=["Ada Lovelace"]) for i in range(4)])
    call_command("import_documents", str(path), "--group-by", "author", "--sample-size", "2", stdout=out)
    assert "4 document(s) created" in out.getvalue()
    assert Sample.objects.count() == 2


def test_the_admin_upload_calls_the_same_import(client_for, admin_user, tmp_path):
    client = client_for(admin_user)
    good = write_jsonl(tmp_path, [doc(1, sample="s"), doc(2, sample="s")])
    with good.open("rb") as handle:
        response = client.post("/admin/annotation/document/import/",
                               {"file": handle, "sample_size": 5, "heldout_fraction": 0})
    assert response.status_code == 302
    assert counts() == (2, 1, 2)


def test_the_admin_upload_shows_every_problem_and_writes_nothing(client_for, admin_user, tmp_path):
    client = client_for(admin_user)
    bad = write_jsonl(tmp_path, [doc(7), doc(8, year="soon")], name="bad.jsonl")
    with bad.open("rb") as handle:
        response = client.post("/admin/annotation/document/import/",
                               {"file": handle, "sample_size": 5, "heldout_fraction": 0})
    assert response.status_code == 200
    assert "bad.jsonl, line 2, field &#x27;year&#x27;" in response.content.decode()
    assert Document.objects.count() == 0


@pytest.mark.parametrize("persona", ["alice", "charlie"])
def test_the_admin_upload_is_for_admins_only(client_for, persona, request):
    response = client_for(request.getfixturevalue(persona)).get("/admin/annotation/document/import/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_admin_upload_sends_anonymous_users_to_login(client):
    response = client.get("/admin/annotation/document/import/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
