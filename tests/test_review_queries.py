"""The SQL the expert screens send per request, pinned: a change that adds a query to the vote round trip (an
N+1, a lazy relation, a second membership check) fails here before it shows in bench/review_load.py.

Two counts per request: the statements that read or write data (what the issue's budget of ≤ 10 counts), and
everything the connection sees, BEGIN and COMMIT included (pytest-django's query counter). Transactional
tests, so the view's transactions are real ones and not savepoints inside the test's.
"""

import re

import pytest
from django.db import connection

from tests.review_factories import fast_passwords, make_campaign  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
HTMX = {"HX-Request": "true"}
CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


def statements(captured) -> int:
    """The captured queries that read or write data: transaction control left out (SQLite sends its BEGIN
    IMMEDIATE as a statement, PostgreSQL's driver does not)."""
    return sum(1 for query in captured if not CONTROL.match(query["sql"]))


def shown_pk(response) -> int:
    return int(re.search(r'data-assignment="(\d+)"', response.content.decode()).group(1))


@pytest.fixture
def on_screen(client_for, alice, settings):
    """alice, signed in, with a pair of a 30-pair campaign open on her screen, and the campaign's totals cached
    as in production (counting them costs one statement more once per REVIEW_PROGRESS_CACHE_SECONDS)."""
    from django.core.cache import caches

    settings.REVIEW_PROGRESS_CACHE_SECONDS = 60
    caches["process"].clear()
    campaign = make_campaign([alice], pairs=30, guidelines="Prefer **grounded** profiles.")
    client = client_for(alice)
    return client, campaign, shown_pk(client.get(f"/review/{campaign.pk}/"))


def test_a_vote_and_the_next_pair_take_at_most_ten_statements(on_screen, django_assert_max_num_queries):
    # Session; user with the expert role (annotation.roles.RoleBackend); the assignment; the vote (two writes);
    # the claim of the next pair (a locking read that brings the pair; two writes); the expert's votes in the
    # campaign; the next pair's abstracts. With sessions in Redis (production), one fewer.
    client, campaign, pk = on_screen
    with django_assert_max_num_queries(10 + 4) as captured:  # + BEGIN/COMMIT of the vote and of the claim
        response = client.post(f"/review/assignment/{pk}/vote", {"choice": "left"}, headers=HTMX)
    assert shown_pk(response) != pk
    assert statements(captured) <= 10


def test_flagging_a_competency_costs_one_statement_more(on_screen, django_assert_max_num_queries):
    # The profiles, to name the flagged competency canonically, are fetched only when a flag is posted.
    client, campaign, pk = on_screen
    with django_assert_max_num_queries(11 + 4) as captured:
        response = client.post(f"/review/assignment/{pk}/vote", {"choice": "right", "flag-left-0": "irrelevant"},
                               headers=HTMX)
    assert shown_pk(response) != pk
    assert statements(captured) <= 11


def test_a_double_submit_costs_no_more_than_a_vote(on_screen, django_assert_max_num_queries):
    client, campaign, pk = on_screen
    client.post(f"/review/assignment/{pk}/vote", {"choice": "left"}, headers=HTMX)
    with django_assert_max_num_queries(9):
        response = client.post(f"/review/assignment/{pk}/vote", {"choice": "left"}, headers=HTMX)
    assert "already had your answer" in response.content.decode()


def test_the_campaign_page_with_a_pair_open_takes_six_statements(on_screen, django_assert_max_num_queries):
    # Session, user with the expert role; the campaign; the open pair with its profiles; the expert's votes in
    # the campaign; abstracts. The guidelines' markdown is rendered once per text, not per page.
    client, campaign, pk = on_screen
    with django_assert_max_num_queries(6):
        response = client.get(f"/review/{campaign.pk}/")
    assert shown_pk(response) == pk and "<strong>grounded</strong>" in response.content.decode()


def test_the_queue_sends_an_expert_on_in_four_statements(on_screen, django_assert_max_num_queries):
    client, campaign, pk = on_screen
    with django_assert_max_num_queries(4):
        response = client.get("/review/")
    assert response.status_code == 302 and response["Location"] == f"/review/{campaign.pk}/"


def progress_text(response) -> str:
    return re.search(r'<p class="progress-text">(.*?)</p>', response.content.decode(), re.S).group(1)


def counts_the_campaign(captured) -> bool:
    return any(re.search(r'SUM\([^)]*"assignment_count"\)', query["sql"]) for query in captured)


def test_the_campaign_totals_are_counted_once_per_cache_period(on_screen):
    # Counting the totals reads every item of the campaign; production reuses the count for a second.
    from django.core.cache import caches
    from django.test.utils import CaptureQueriesContext

    client, campaign, pk = on_screen
    caches["process"].clear()
    with CaptureQueriesContext(connection) as counted:
        page = client.get(f"/review/{campaign.pk}/")
    assert counts_the_campaign(counted) and "<strong>1</strong> of 30" in progress_text(page)
    assert statements(counted) == 7  # the campaign page's six, and the count

    with CaptureQueriesContext(connection) as reused:
        response = client.post(f"/review/assignment/{pk}/vote", {"choice": "left"}, headers=HTMX)
    # The claim of the next pair took a second judgment; the bar shows the count of a moment ago, and the
    # expert's own votes exactly.
    assert not counts_the_campaign(reused)
    assert "<strong>1</strong> of 30" in progress_text(response) and "yours: 1" in progress_text(response)

    caches["process"].clear()  # what the period's end does
    assert "<strong>2</strong> of 30" in progress_text(client.get(f"/review/{campaign.pk}/"))
