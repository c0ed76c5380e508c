from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.test import RequestFactory
from django.core.management import call_command

from annotation.models import Document, Sample, Split
from annotation.roles import is_admin, is_expert

pytestmark = pytest.mark.django_db


def seed() -> dict[str, str]:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    lines = out.getvalue().split("Logins", 1)[1].splitlines()[1:]
    return dict(line.split() for line in lines if line.strip())


def log_in(username: str, password: str):
    # Login throttling (axes) reads who asks: authentication needs a request, as the login form has one.
    return authenticate(RequestFactory().post("/accounts/login/"), username=username, password=password)


def test_seed_demo_imports_the_bundled_abstracts_into_author_samples():
    seed()
    assert Document.objects.count() == 42
    assert Sample.objects.count() == 9
    assert all(4 <= s.documents.count() <= 5 for s in Sample.objects.all())
    assert Sample.objects.filter(split=Split.HELDOUT).exists() and Sample.objects.filter(split=Split.TRAIN).exists()


def test_seed_demo_prints_logins_that_work_with_the_right_roles():
    logins = seed()
    assert set(logins) == {"admin", "expert1", "expert2"}
    admin = log_in("admin", logins["admin"])
    expert = log_in("expert1", logins["expert1"])
    assert is_admin(admin) and not is_expert(admin)
    assert is_expert(expert) and not is_admin(expert)


def test_seeding_twice_keeps_the_data_and_changes_the_passwords():
    first = seed()
    second = seed()
    assert Document.objects.count() == 42 and Sample.objects.count() == 9
    assert log_in("expert2", first["expert2"]) is None
    assert log_in("expert2", second["expert2"]) is not None
