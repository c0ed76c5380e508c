"""Model instances built from hand-written SQL (annotation/review/rows.py) are the ones the ORM builds: every field,
converted the same way (JSON, datetimes, booleans, NULLs), on PostgreSQL and SQLite alike."""

import pytest
from django.db import connection

from annotation.models import Assignment, Profile, Vote
from annotation.review.rows import RowReader, columns, table
from tests.review_factories import make_campaign

pytestmark = pytest.mark.django_db


def field_values(instance) -> dict:
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


def fetch(sql: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def test_instances_from_sql_equal_the_orms(alice):
    from annotation.review import assignments

    campaign = make_campaign([alice], pairs=2)
    assignment, _ = assignments.claim(alice, campaign)
    assignments.record_vote(assignment, choice="b", rationale="Grounded.",
                            flags={"a": {"Bayesian statistics": "irrelevant"}})
    profile = Profile.objects.filter(competencies__isnull=False).first()
    vote = Vote.objects.get()
    for model, instance in ((Profile, profile), (Assignment, Assignment.objects.get(pk=assignment.pk)), (Vote, vote)):
        rows = fetch(f"SELECT {columns(model, 't').sql} FROM {table(model)} t WHERE t.id = %(pk)s",
                     {"pk": instance.pk})
        loaded = columns(model, "t").load(rows[0], 0)
        assert field_values(loaded) == field_values(instance)
        assert not loaded._state.adding and loaded._state.db == "default"
    assert loaded.competency_flags == {"a": {"Bayesian statistics": "irrelevant"}}  # JSON, not its text


def test_a_row_reads_model_after_model_and_an_outer_join_that_found_nothing_is_none(alice):
    from annotation.review import assignments

    campaign = make_campaign([alice], pairs=1)
    assignment, _ = assignments.claim(alice, campaign)
    votes, assignments_ = columns(Vote, "v"), columns(Assignment, "a")
    row, = fetch(f"SELECT {assignments_.sql}, {votes.sql}, 7 FROM {table(Assignment)} a "
                 f"LEFT OUTER JOIN {table(Vote)} v ON v.assignment_id = a.id", {})
    reader = RowReader(row)
    assert reader.model(assignments_).pk == assignment.pk
    assert reader.model(votes) is None
    assert reader.value() == 7
