"""What the comparison screen shows: blind profiles, the aligned view, evidence, guidelines — all as text."""

import re

import pytest

from annotation.models import Assignment, CampaignItem
from annotation.review.screen import evidence_stems
from tests.review_factories import (  # noqa: F401
    PROFILE_A,
    add_verdicts,
    fast_passwords,
    make_campaign,
    make_comparison,
    make_judge,
)

pytestmark = pytest.mark.django_db
HOSTILE = {
    "domain": 'Pwned <script>alert("domain")</script>',
    "competencies": [
        {"name": "<img src=x onerror=alert(1)>", "description": "<script>alert('description')</script>"},
        {"name": "Bayesian statistics", "description": 'Fine, with "quotes" & <b>tags</b>.'},
        {"name": "Molecular dynamics", "description": "Normal."},
    ],
}


def page_for(client, campaign, flipped: bool = False) -> str:
    client.get(f"/review/{campaign.pk}/")
    Assignment.objects.update(flipped=flipped)
    return client.get(f"/review/{campaign.pk}/").content.decode()


def text_of(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_the_profiles_are_blind(client_for, alice):
    page = page_for(client_for(alice), make_campaign([alice], pairs=1))
    assert "secret-generator-name" not in page
    assert "Computational structural biology" in page and "Machine learning for biology" in page


@pytest.mark.parametrize("flipped, left_domain", [(False, "Computational"), (True, "Machine learning")])
def test_the_left_profile_follows_the_stored_flip(client_for, alice, flipped, left_domain):
    page = page_for(client_for(alice), make_campaign([alice], pairs=1), flipped)
    first_domain = re.search(r'<span class="domain">([^<]*)</span>', page).group(1)
    assert first_domain.startswith(left_domain)


def test_shared_competencies_are_aligned_and_the_rest_marked_as_only_in_one(client_for, alice):
    page = text_of(page_for(client_for(alice), make_campaign([alice], pairs=1)))
    # "Protein structure" (A) and "Protein structures" (B) share a row; the others stand alone.
    assert "Protein structure Studies how proteins fold." in page
    assert re.search(r"Protein structure Studies how proteins fold\. .*? Protein structures Reconstructs", page)
    assert "Bayesian statistics only in A" in page and "Quantum chemistry only in B" in page
    assert "Protein structure only in" not in page


def test_competency_terms_are_marked_in_the_abstracts_as_evidence(client_for, alice):
    page = page_for(client_for(alice), make_campaign([alice], pairs=1))
    assert '<mark class="ev" data-term="bayesian">Bayesian</mark>' in page
    assert '<mark class="ev" data-term="proteins">proteins</mark>' in page
    text = text_of(page)
    assert "Quantum chemistry only in B Not in the abstracts at all. not found in abstracts" in text
    assert re.search(r"Bayesian statistics only in A Builds Bayesian models of folding\. \d+× in abstracts", text)


@pytest.mark.parametrize("name, stems", [
    ("Bayesian statistics", ["bayesian", "statist"]),
    ("Statistical modelling", ["statist", "model"]),
    ("Deep learning", ["deep", "learn"]),
    ("NLP and machine translation", ["nlp", "machine", "transl"]),
    ("Research methods", []),
    # Filler words never count as evidence, however often the abstracts use them.
    ("Provide insights about being like others", ["insight"]),
    ("Ability to work with various tools", ["tool"]),
])
def test_evidence_terms_are_stems_of_the_telling_words(name, stems):
    assert evidence_stems(name) == stems


def test_model_output_is_shown_as_text_never_as_markup(client_for, alice):
    campaign = make_campaign([alice], pairs=0)
    hostile = make_comparison(HOSTILE, PROFILE_A, abstracts=[("<i>Title</i>", "Bayesian <script>x()</script>")])
    CampaignItem.objects.create(campaign=campaign, comparison=hostile)
    page = page_for(client_for(alice), campaign)
    for raw in ["<script>alert", "<img src=x", "<b>tags</b>", "<i>Title</i>", "<script>x()"]:
        assert raw not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;alert(&#x27;description&#x27;)&lt;/script&gt;" in page
    assert "Pwned &lt;script&gt;alert(&quot;domain&quot;)&lt;/script&gt;" in page
    assert 'Bayesian</mark> &lt;script&gt;x()&lt;/script&gt;' in page


def test_judge_reasoning_is_shown_as_text(client_for, alice):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=1, judge_display="alongside", judge=judge)
    add_verdicts(campaign.items.get().comparison, judge, "a", "a", reasoning="<img src=x onerror=alert(1)>")
    page = page_for(client_for(alice), campaign)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt; (ab)" in page


def test_the_judge_reasoning_says_when_its_labels_are_the_reverse_of_the_experts(client_for, alice):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=1, judge_display="alongside", judge=judge)
    add_verdicts(campaign.items.get().comparison, judge, "a", "a")
    text = text_of(page_for(client_for(alice), campaign, flipped=False))
    # Order "ba" showed canonical b (the expert's B) first: the judge's "A" was the expert's B.
    assert "A shown first · preferred A" in text
    assert "B shown first · preferred A (its “A” is your B, its “B” your A)" in text


def test_a_judge_without_reasoning_is_not_announced_as_reasoning(client_for, alice):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=1, judge_display="alongside", judge=judge)
    comparison = campaign.items.get().comparison
    add_verdicts(comparison, judge, "a", "b")
    client = client_for(alice)
    assert "The judge's reasoning" in text_of(page_for(client, campaign))
    comparison.verdicts.update(reasoning="")  # the offline judge answers from one token and writes none
    text = text_of(page_for(client, campaign))
    assert "The judge's reasoning" not in text
    assert "The judge's answer in each order · it wrote no reasoning" in text
    assert "A shown first · preferred A" in text


def test_guidelines_are_markdown_rendered_safely(client_for, alice):
    guidelines = "Prefer **grounded** competencies.\n\n- one\n- two\n\n<script>alert(1)</script>[x](javascript:alert(2))"
    campaign = make_campaign([alice], pairs=1, guidelines=guidelines)
    page = page_for(client_for(alice), campaign)
    assert "<strong>grounded</strong>" in page and "<li>one</li>" in page
    assert "<script>alert(1)" not in page and "javascript:" not in page


def test_guidelines_and_keys_stay_out_of_the_swapped_panel(client_for, alice):
    campaign = make_campaign([alice], pairs=2, guidelines="Read **carefully**.")
    client = client_for(alice)
    page = page_for(client, campaign)
    assert "Read <strong>carefully</strong>" in page and 'id="keys-help"' in page
    panel = client.get(f"/review/{campaign.pk}/", headers={"HX-Request": "true"}).content.decode()
    assert "carefully" not in panel and "keys-help" not in panel


def test_the_page_loads_its_own_style_and_script_and_the_keys(client_for, alice):
    page = page_for(client_for(alice), make_campaign([alice], pairs=1))
    assert "css/review.css" in page and "js/review.js" in page and "vendor/htmx.min.js" in page
    for label, key in [("A", "1"), ("B", "2"), ("Tie", "3"), ("Both bad", "4")]:
        assert f"<span>{label}</span> <kbd>{key}</kbd>" in page
    assert "Skip <kbd>s</kbd>" in page and "Submit <kbd>Enter</kbd>" in page


def test_the_queue_goes_to_the_oldest_campaign_with_work(client_for, alice):
    finished = make_campaign([alice], pairs=0, name="finished")
    waiting = make_campaign([alice], pairs=1, name="waiting")
    response = client_for(alice).get("/review/")
    assert response["Location"] == f"/review/{waiting.pk}/" != f"/review/{finished.pk}/"
