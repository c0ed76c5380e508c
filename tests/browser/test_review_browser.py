"""An expert at work in a real browser: keyboard only, undo, reveal-and-revise, hostile model output."""

from pathlib import Path

import pytest
from django.conf import settings

from annotation.models import Assignment, CampaignItem, Vote
from tests.conftest import PASSWORD
from tests.review_factories import (  # noqa: F401
    PROFILE_A,
    add_verdicts,
    fast_passwords,
    make_campaign,
    make_comparison,
    make_judge,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
SCREENSHOT = Path(settings.BASE_DIR) / "var" / "screenshots" / "review.png"


def shown(page) -> str | None:
    return page.locator("#review").get_attribute("data-assignment")


def press_and_wait(page, key: str) -> str | None:
    """Press a key that answers the pair, and wait for the next pair's panel to be swapped in."""
    before = shown(page)
    page.keyboard.press(key)
    page.wait_for_function("old => document.querySelector('#review').dataset.assignment !== old", arg=before)
    return shown(page)


def canonical(assignment_pk: str, side: str) -> str:
    flipped = Assignment.objects.get(pk=assignment_pk).flipped
    return {"left": "b" if flipped else "a", "right": "a" if flipped else "b"}[side]


def test_an_expert_reviews_by_keyboard_alone(page, log_in, alice):
    make_campaign([alice], pairs=4)
    log_in(alice)
    page.goto("/review/")
    page.evaluate("window.samePage = true")  # survives htmx swaps, not a page load
    first = shown(page)

    page.keyboard.press("Enter")  # nothing chosen yet: a hint, no request
    assert "Choose A, B, tie or both bad" in page.locator(".notice").inner_text()
    page.keyboard.press("?")
    assert page.locator("#keys-help").get_by_text("Undo your last vote, or the skip").is_visible()
    page.keyboard.press("?")
    assert not page.locator("#keys-help").get_by_text("Undo your last vote, or the skip").is_visible()

    page.keyboard.press("ArrowRight")
    page.keyboard.press("1")
    assert page.locator("input[name=choice][value=left]").is_checked()
    second = press_and_wait(page, "Enter")
    page.keyboard.press("2")
    third = press_and_wait(page, "Enter")
    assert len({first, second, third}) == 3

    back = press_and_wait(page, "u")  # undo: the second pair again, its vote gone
    assert back == second and not Vote.objects.filter(assignment_id=second).exists()
    page.keyboard.press("3")
    assert press_and_wait(page, "Enter") == third

    fourth = press_and_wait(page, "s")
    assert "comes back at the end of your queue" in page.locator(".notice").inner_text()
    assert press_and_wait(page, "u") == third, "u takes the skip back"
    assert press_and_wait(page, "s") == fourth
    page.keyboard.press("4")
    page.locator("#rationale").focus()  # the one place the expert types
    page.keyboard.type("Both list 1 or 2 things the abstracts never say.")
    before = shown(page)
    page.keyboard.press("Control+Enter")
    page.wait_for_function("old => document.querySelector('#review').dataset.assignment !== old", arg=before)
    assert shown(page) == third, "the skipped pair comes back at the end of the queue"
    assert page.get_by_text("You skipped this pair earlier").is_visible()
    before = shown(page)
    page.keyboard.press("s")
    page.wait_for_function("old => document.querySelector('#review').dataset.assignment !== old", arg=before)
    assert page.get_by_text("Nothing left for you here").is_visible()
    assert page.get_by_text("You skipped 1 pair").is_visible()
    assert page.evaluate("window.samePage") is True

    votes = {str(v.assignment_id): v for v in Vote.objects.all()}
    assert set(votes) == {first, second, fourth}
    assert votes[first].choice == canonical(first, "left")
    assert votes[second].choice == "tie"
    assert (votes[fourth].choice, votes[fourth].rationale) == ("both_bad", "Both list 1 or 2 things the abstracts never say.")
    assert Assignment.objects.get(pk=third).skipped_at is not None
    assert all(v.seconds_spent is not None and v.seconds_spent >= 0 for v in votes.values())


def test_enter_submits_after_a_mouse_click_opened_an_abstract(page, log_in, alice):
    make_campaign([alice], pairs=2)
    log_in(alice)
    page.goto("/review/")
    first = page.locator(".abstract").first
    first.locator("summary").focus()
    page.keyboard.press("Enter")  # a keyboard user on a summary: Enter opens it, nothing is sent
    assert first.get_attribute("open") is not None and not Vote.objects.exists()
    page.keyboard.press("Enter")
    assert first.get_attribute("open") is None
    first.locator("summary").click()  # the mouse opens it to read; the keys go back to the pair
    assert first.get_attribute("open") is not None
    page.keyboard.press("1")
    before = shown(page)
    assert press_and_wait(page, "Enter") != before
    assert Vote.objects.filter(assignment_id=before).exists()


def test_reveal_after_vote_lets_the_expert_revise(page, log_in, alice):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=2, judge_display="reveal", judge=judge)
    for item in campaign.items.all():
        add_verdicts(item.comparison, judge, "b", "b", reasoning="B is grounded in the abstracts.")
    log_in(alice)
    page.goto("/review/")
    first = shown(page)
    assert page.locator(".judge").count() == 0  # nothing before the vote

    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.locator(".judge.revealed").wait_for()
    assert shown(page) == first
    assert "The judge prefers" in page.locator(".judge-headline").inner_text()
    assert page.get_by_text("B is grounded in the abstracts. (ab)").is_visible()
    assert page.locator("input[name=choice][value=left]").is_checked()  # the first answer, kept

    page.keyboard.press("2")
    assert press_and_wait(page, "Enter") != first
    vote = Vote.objects.get(assignment_id=first)
    assert vote.first_choice == canonical(first, "left")
    assert vote.choice == canonical(first, "right")
    assert vote.revised_after_reveal is True


def test_the_same_forms_work_without_javascript(browser, live_server, alice):
    make_campaign([alice], pairs=3)
    context = browser.new_context(java_script_enabled=False, base_url=live_server.url)
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", alice.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto("/review/")
    first = shown(page)
    page.locator(".choices").get_by_text("B", exact=True).click()
    page.get_by_role("button", name="Submit").click()
    second = shown(page)
    page.get_by_role("button", name="Skip").click()
    assert shown(page) not in (first, second)
    page.get_by_role("button", name="Undo last vote").click()
    assert shown(page) == first and not Vote.objects.exists()
    context.close()


HOSTILE = {
    "domain": "<script>window.pwned = 'script'; alert('script')</script>",
    "competencies": [
        {"name": "<img src=x onerror=\"window.pwned='img'; alert('img')\">", "description": "Looks like markup."},
        {"name": "Bayesian statistics", "description": "<b onmouseover=alert('b')>bold?</b>"},
        {"name": "Molecular dynamics", "description": "Plain."},
    ],
}


def test_markup_in_model_output_shows_as_text_and_never_runs(page, log_in, alice):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=1, judge_display="alongside", judge=judge)
    hostile = make_comparison(HOSTILE, PROFILE_A)
    CampaignItem.objects.create(campaign=campaign, comparison=hostile)
    for item in campaign.items.all():
        add_verdicts(item.comparison, judge, "a", "a", reasoning="<img src=y onerror=\"alert('judge')\">")
    log_in(alice)
    page.goto("/review/")
    page.keyboard.press("1")
    press_and_wait(page, "Enter")  # the hostile pair arrives through an htmx swap, the riskiest path
    domain = page.locator(".profile-head .domain", has_text="window.pwned")
    domain.wait_for()
    assert domain.inner_text() == HOSTILE["domain"]
    name = page.locator(".competency-name", has_text="onerror")
    assert name.is_visible() and HOSTILE["competencies"][0]["name"] in name.inner_text()
    bold = page.locator(".competency-description", has_text="onmouseover")
    assert bold.inner_text() == "<b onmouseover=alert('b')>bold?</b>"
    page.get_by_text("The judge's reasoning").click()
    reasoning = page.locator(".judge-reasoning", has_text="(ab)")
    assert reasoning.is_visible() and reasoning.inner_text() == "<img src=y onerror=\"alert('judge')\"> (ab)"
    page.get_by_text("Model output as written").click()
    page.mouse.move(300, 300)
    assert page.evaluate("window.pwned") is None
    assert page.dialogs == []
    assert page.locator("#review img, #review script").count() == 0


ABSTRACTS = [
    ("Bayesian inference of protein folding pathways from sparse NMR data",
     "We develop a Bayesian framework that infers folding pathways of small proteins from sparse NMR "
     "restraints. Markov chain Monte Carlo sampling over coarse-grained conformations recovers intermediate "
     "states that agree with molecular dynamics simulations, and posterior uncertainty identifies which "
     "restraints are most informative for future experiments."),
    ("Enhanced sampling molecular dynamics of intrinsically disordered proteins",
     "Replica exchange molecular dynamics with a reweighted force field reproduces the ensemble properties of "
     "three intrinsically disordered proteins. We compare simulated and measured small-angle X-ray scattering "
     "profiles and show that enhanced sampling is required to converge the radius of gyration."),
    ("Deep generative models for cryo-EM heterogeneity",
     "A variational autoencoder learns a continuous latent space of conformations from cryo-EM particle "
     "images. Trained on simulated and experimental datasets, the model separates conformational states "
     "without manual classification and reconstructs density maps at near-atomic resolution."),
    ("Uncertainty quantification for protein structure prediction",
     "We calibrate the confidence scores of deep learning structure predictors against experimental "
     "structures and propose a Bayesian recalibration that reduces overconfidence on disordered regions."),
]
GOOD = {
    "domain": "Computational structural biology and Bayesian inference",
    "competencies": [
        {"name": "Bayesian inference", "description": "Builds Bayesian models of folding pathways and recalibrates "
                                                      "structure predictors."},
        {"name": "Molecular dynamics simulation", "description": "Runs replica exchange and enhanced sampling "
                                                                 "simulations of disordered proteins."},
        {"name": "Cryo-EM image analysis", "description": "Separates conformational states in particle images."},
        {"name": "NMR data integration", "description": "Infers pathways from sparse NMR restraints."},
        {"name": "Uncertainty quantification", "description": "Calibrates confidence scores against experiments."},
    ],
}
WEAKER = {
    "domain": "Machine learning for structural biology",
    "competencies": [
        {"name": "Deep learning", "description": "Trains variational autoencoders and structure predictors."},
        {"name": "Molecular dynamics simulations", "description": "Simulates proteins with molecular dynamics."},
        {"name": "Bayesian statistics", "description": "Uses Bayesian methods."},
        {"name": "Drug discovery", "description": "Designs small-molecule inhibitors for clinical trials."},
    ],
}


def test_the_review_screen_at_laptop_width(page, log_in, alice):
    judge = make_judge()
    campaign = make_campaign([alice], pairs=0, judge_display="alongside", judge=judge,
                             guidelines="Prefer competencies **grounded in the abstracts**.", name="Structural biology, round 2")
    comparison = make_comparison(GOOD, WEAKER, abstracts=ABSTRACTS)
    CampaignItem.objects.create(campaign=campaign, comparison=comparison)
    make_campaign([alice], pairs=0)  # another campaign: the queue still opens this one
    add_verdicts(comparison, judge, "a", "b", reasoning="Profile A ties every competency to an abstract; "
                                                        "Profile B claims drug discovery, which no abstract shows.")
    log_in(alice)
    page.goto(f"/review/{campaign.pk}/")
    Assignment.objects.update(flipped=False)
    page.reload()
    guidelines = page.get_by_text("grounded in the abstracts")
    assert guidelines.is_visible()  # shown on the first visit, before any vote
    page.keyboard.press("Escape")
    assert not guidelines.is_visible()
    page.locator(".abstract summary").first.click()
    page.keyboard.press("1")
    page.locator(".competency").nth(2).hover()  # show the evidence highlighting at work
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert page.locator(".decision").is_visible()
    box = page.locator(".decision").bounding_box()
    assert box["y"] + box["height"] <= 800  # the decision bar is always on screen
    assert page.locator("mark.ev.hot").count() > 0
