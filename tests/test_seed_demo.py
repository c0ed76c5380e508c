from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from annotation.models import Document, Sample, Split
from annotation.roles import is_admin, is_expert

pytestmark = pytest.mark.django_db


def seed() -> dict[str, str]:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    lines = out.getvalue().split("Logins", 1)[1].splitlines()[1:]
    return dict(line.split() for line in lines if line.strip())


def test_seed_demo_imports_the_bundled_abstracts_into_author_samples():
    seed()
    assert Document.objects.count() == 42
    assert Sample.objects.count() == 9
    assert all(4 <= s.documents.count() <= 5 for s in Sample.objects.all())
    assert Sample.objects.filter(split=Split.HELDOUT).exists() and Sample.objects.filter(split=Split.TRAIN).exists()


def test_seed_demo_prints_logins_that_work_with_the_right_roles():
    logins = seed()
    assert set(logins) == {"admin", "expert1", "expert2"}
    admin = authenticate(username="admin", password=logins["admin"])
    expert = authenticate(username="expert1", password=logins["expert1"])
    assert is_admin(admin) and not is_expert(admin)
    assert is_expert(expert) and not is_admin(expert)


def test_seeding_twice_keeps_the_data_and_changes_the_passwords():
    first = seed()
    second = seed()
    assert Document.objects.count() == 42 and Sample.objects.count() == 9
    assert authenticate(username="expert2", password=first["expert2"]) is None
    assert authenticate(username="expert2", password=second["expert2"]) is not None
