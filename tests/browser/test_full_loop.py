"""The whole loop in a real browser, as the people who use CompX meet it.

An admin imports a tiny file of abstracts, sets up a generator, a judge and a campaign in the admin, generates
candidate profiles and judges them (admin actions, the real worker, the real offline model), an expert votes
through the review queue, the admin reads the agreement dashboard, exports a DPO dataset, starts a short
training run, watches it finish and evaluates the tuned model on the held-out sample.

Everything is as small as still makes a real loop: two researchers with two abstracts each (one train sample,
one held-out), six candidates for the train sample (three are valid: three pairs), a two-step training run, six
profiles per model on the held-out sample. Generation and training are seeded, so on one machine these settings
give the same profiles every time; when a step yields nothing to go on (no two pairable profiles, no pair in the
campaign, no training row, no pair for the evaluation's judge) the test says so.

Screenshots of the key pages are written to the test's tmp dir (its path is printed at the end).
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

from annotation.models import Assignment, Campaign, DatasetExport, Job, Profile, Sample, Split, Vote
from tests.conftest import PASSWORD
from training.models import EvaluationRun, TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.model, pytest.mark.django_db(transaction=True),
              pytest.mark.timeout(1500)]  # ~2-4 min idle; far longer when other jobs share the cores

# Generous: the budget is a few minutes on an idle two-core machine, but CI machines are shared.
MODEL_STEP_MS = 600_000
PAGE_MS = 60_000

# Two researchers with two abstracts each, from the demo's bundled abstracts (real-length abstracts: the small
# model writes profiles for them far more often than for a line or two). heldout_for("Ana Rivera #1", 0.5) is False
# and heldout_for("Elif Demir #1", 0.5) is True: with a held-out fraction of 0.5 the import makes one train
# sample and one held-out sample.
RESEARCHERS = {"Ana Rivera": ["demo-001", "demo-002"], "Elif Demir": ["demo-003", "demo-004"]}
DEMO_ABSTRACTS = Path(__file__).resolve().parents[2] / "annotation" / "demo_data" / "abstracts.jsonl"
TRAIN_SAMPLE, HELDOUT_SAMPLE = "Ana Rivera #1", "Elif Demir #1"

# The smallest decoding that still writes whole profiles; generation is seeded (DecodingSettings.seed = 0), so
# these settings give the same candidates on every run on the same machine.
GENERATOR = {"name": "smollm2-loop", "temperature": "0.5", "max_new_tokens": "256", "candidates": "6"}
# Profiles per model on the held-out sample: the evaluation pairs the i-th of each, and a pair is judged only
# when both are valid; at this model's validity (about a third) six give the judge a pair to read.
EVAL_CANDIDATES = 6


def abstracts_jsonl() -> bytes:
    demo = {row["id"]: row for row in map(json.loads, DEMO_ABSTRACTS.read_text().splitlines())}
    rows = [{**demo[doc_id], "authors": [author]} for author, ids in RESEARCHERS.items() for doc_id in ids]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class Steps:
    """Times each step of the story; the table is printed at the end (and shown by pytest on failure)."""

    def __init__(self):
        self.started = self.last = time.monotonic()
        self.rows: list[tuple[str, float]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.rows.append((name, now - self.last))
        self.last = now

    def report(self) -> str:
        lines = [f"{seconds:7.1f} s  {name}" for name, seconds in self.rows]
        return "\n".join(lines + [f"{time.monotonic() - self.started:7.1f} s  in all"])


@contextmanager
def screenshots_on_failure(browser, shots: Path, steps: Steps):
    """Every open page is photographed when a step fails; the step times are printed either way."""
    try:
        yield
    except BaseException:
        for c, context in enumerate(browser.contexts):
            for n, tab in enumerate(context.pages):
                try:
                    tab.screenshot(path=str(shots / f"failure-{c}-{n}.png"), full_page=True)
                except Exception:  # a page that cannot be photographed must not hide the failure
                    pass
        raise
    finally:
        print(f"\nThe whole loop, step by step:\n{steps.report()}\nScreenshots: {shots}")


def admin_action(page, action_label: str) -> None:
    """Select every row of the change list and run an action (Django admin's "Go")."""
    page.check("#action-toggle")
    page.select_option("select[name=action]", label=action_label)
    page.click("button[name=index]")


def wait_until_finished(page, live: str, what: str) -> None:
    """Wait for a live page (htmx polling) to show a finished status; fail with the page's text unless it succeeded."""
    finished = ", ".join(f"{live}.status-{s}" for s in ("succeeded", "failed", "cancelled"))
    page.wait_for_selector(finished, timeout=MODEL_STEP_MS)
    status = page.locator(live).get_attribute("class").split("status-")[-1].split()[0]
    assert status == "succeeded", f"{what} ended {status}: {page.locator(live).inner_text()[:3000]}"


def job_from_page(page) -> Job:
    return Job.objects.get(pk=int(page.url.rstrip("/").split("/")[-1]))


def valid_counts() -> dict[str, str]:
    return {s.name: f"{s.profiles.pairable().count()} pairable of {s.profiles.count()}"
            for s in Sample.objects.order_by("name")}


def invalid_reasons() -> list[str]:
    return list(Profile.objects.filter(is_valid=False).values_list("invalid_reason", flat=True))


def test_the_whole_loop_in_the_browser(browser, page, live_server, log_in, admin_user, alice, start_worker,
                                       tmp_path, settings, monkeypatch):
    # Exports and runs are written where both this process (the site) and the worker read them.
    media = tmp_path / "media"
    monkeypatch.setenv("MEDIA_ROOT", str(media))
    settings.MEDIA_ROOT = media
    shots = tmp_path / "screenshots"
    shots.mkdir()
    start_worker()  # every queue, one task at a time; it starts while the admin sets things up
    page.set_default_timeout(PAGE_MS)
    steps = Steps()
    with screenshots_on_failure(browser, shots, steps):

        # --- 1. The admin imports the abstracts -------------------------------------------------------------------
        log_in(admin_user)
        page.goto("/admin/")
        page.get_by_role("link", name="Documents").click()
        page.get_by_role("link", name="Import documents").click()
        page.set_input_files("#id_file", files=[{"name": "abstracts.jsonl", "mimeType": "application/json",
                                                 "buffer": abstracts_jsonl()}])
        page.check("#id_group_by_author")
        page.fill("#id_sample_size", "2")
        page.fill("#id_heldout_fraction", "0.5")
        page.click("input[type=submit][value=Import]")
        page.wait_for_url("**/admin/annotation/sample/")
        assert "4 document(s) created" in page.locator(".messagelist").inner_text()
        splits = dict(Sample.objects.values_list("name", "split"))
        assert splits == {TRAIN_SAMPLE: Split.TRAIN, HELDOUT_SAMPLE: Split.HELDOUT}, splits
        steps.done("import")

        # --- 2. … adds a generator, a judge and a campaign for the expert -----------------------------------------
        page.goto("/admin/")
        page.locator("tr.model-generator a.addlink").click()
        page.fill("#id_name", GENERATOR["name"])
        page.select_option("#id_backend", "local")
        page.fill("#id_model", "default")
        for field in ("temperature", "max_new_tokens", "candidates"):
            page.fill(f"#id_{field}", GENERATOR[field])
        assert page.is_checked("#id_format_guide")
        page.click("input[name=_save]")
        page.wait_for_url("**/admin/annotation/generator/")

        page.goto("/admin/")
        page.locator("tr.model-judge a.addlink").click()
        page.fill("#id_name", "smollm2-judge")
        page.select_option("#id_backend", "local")
        page.fill("#id_model", "default")
        page.click("input[name=_save]")
        page.wait_for_url("**/admin/annotation/judge/")

        page.goto("/admin/")
        page.locator("tr.model-campaign a.addlink").click()
        page.fill("#id_name", "Loop: which profile fits the abstracts?")
        page.fill("#id_guidelines", "Choose the profile whose competencies the abstracts **support**.")
        page.select_option("#id_judge_display", "reveal")
        page.select_option("#id_judge", label="smollm2-judge")
        page.select_option("#id_experts_from", label=alice.username)  # the admin's two-box picker
        page.click("#id_experts_add")
        page.click("input[name=_save]")
        page.wait_for_url("**/admin/annotation/campaign/")
        campaign = Campaign.objects.get()
        assert list(campaign.experts.all()) == [alice]
        steps.done("generator, judge, campaign")

        # --- 3. … generates candidates for the train sample (admin action → job page) -----------------------------
        page.goto("/admin/")
        page.get_by_role("link", name="Samples", exact=True).click()
        page.locator("#changelist-filter").get_by_role("link", name="Train", exact=True).click()
        admin_action(page, "Generate profiles for the selected samples…")
        page.select_option("#id_generator", label=GENERATOR["name"])
        page.click("input[name=apply]")
        page.wait_for_url("**/jobs/*/")
        wait_until_finished(page, "#job-progress", "generation")
        page.screenshot(path=str(shots / "1-generation-job.png"), full_page=True)
        pairable = Sample.objects.get(name=TRAIN_SAMPLE).profiles.pairable().count()
        assert pairable >= 2, (f"generation produced no pairable sample: valid counts {valid_counts()}; job says "
                               f"{job_from_page(page).message!r}; invalid because {invalid_reasons()}")
        steps.done(f"generation ({job_from_page(page).message})")

        # --- 4. … judges every pair of them into the campaign -----------------------------------------------------
        page.goto("/admin/annotation/sample/?split__exact=train")  # back to the filtered list
        admin_action(page, "Judge the selected samples' profiles…")
        page.select_option("#id_judge", label="smollm2-judge")
        page.select_option("#id_pairing", "all")
        page.select_option("#id_campaign", label=campaign.name)
        page.click("input[name=apply]")
        page.wait_for_url("**/jobs/*/")
        wait_until_finished(page, "#job-progress", "judging")
        pairs = campaign.items.count()
        assert pairs == pairable * (pairable - 1) // 2, (
            f"judging put {pairs} comparisons in the campaign for {pairable} pairable profiles: "
            f"{job_from_page(page).message!r}")
        steps.done(f"judging ({job_from_page(page).message})")

        # --- 5. The expert votes through the queue, from the keyboard ---------------------------------------------
        expert = browser.new_context(viewport=page.viewport_size, base_url=live_server.url).new_page()
        expert.set_default_timeout(PAGE_MS)
        expert.goto("/accounts/login/")
        expert.fill("#id_username", alice.username)
        expert.fill("#id_password", PASSWORD)
        expert.click("button[type=submit]")
        expert.get_by_role("link", name="Open my queue →").click()
        expert.wait_for_url("**/review/**")
        expert.wait_for_load_state()  # the keyboard works once the page's script has run
        expect(expert.locator("details.guidelines[open]")).to_be_visible(timeout=PAGE_MS)  # shown on the first visit
        expert.keyboard.press("Escape")
        revealed = 0
        for n in range(pairs):
            shown = expert.locator("#review").get_attribute("data-assignment")
            # The expert prefers the pair's first profile, then its second, …: fixed preferences whatever side each
            # is shown on (left/right is random per expert), so the training data and the tuned model never vary.
            prefers_a = n % 2 == 0
            key, side = ("1", "left") if prefers_a != Assignment.objects.get(pk=shown).flipped else ("2", "right")
            expert.keyboard.press(key)
            expect(expert.locator(f"input[name=choice][value={side}]")).to_be_checked(timeout=PAGE_MS)
            expert.keyboard.press("Enter")
            # Reveal-after-vote: a pair the judge answered validly comes back with its verdict, to keep or change.
            expert.wait_for_function(
                "old => document.querySelector('#review').dataset.assignment !== old"
                " || document.querySelector('.judge.revealed') !== null", arg=shown)
            if expert.locator(".judge.revealed").count():
                if not revealed:
                    expert.screenshot(path=str(shots / "2-review-after-reveal.png"))
                revealed += 1
                expert.keyboard.press("Enter")
                expert.wait_for_function("old => document.querySelector('#review').dataset.assignment !== old",
                                         arg=shown)
        expert.get_by_text("Nothing left for you here").wait_for()
        votes = Vote.objects.filter(expert=alice).count()
        assert votes == pairs
        judged = campaign.items.filter(comparison__verdicts__is_valid=True).distinct().count()
        assert revealed == judged, f"the judge's verdict was revealed on {revealed} pairs, {judged} have a valid one"
        expert.context.close()
        steps.done(f"expert votes ({votes}, {revealed} revealed)")

        # --- 6. The admin reads the agreement dashboard -----------------------------------------------------------
        page.goto("/")
        page.get_by_role("link", name="dashboard", exact=True).click()
        page.select_option("#campaign", label=campaign.name)
        page.click("input[type=submit][value=Show]")
        page.wait_for_url(f"**campaign={campaign.pk}**")
        tiles = page.locator(".tile")
        assert tiles.filter(has_text="expert votes").locator("b").inner_text() == str(votes)
        assert page.locator("#judges").get_by_role("cell", name="smollm2-judge", exact=True).is_visible()
        expert_row = page.locator("#experts tr", has=page.get_by_role("cell", name=alice.username, exact=True))
        assert expert_row.locator("td").nth(1).inner_text() == str(votes)
        page.screenshot(path=str(shots / "3-agreement.png"), full_page=True)
        steps.done("agreement dashboard")

        # --- 7. … exports the expert-labelled pairs as a DPO dataset ----------------------------------------------
        page.goto("/admin/")
        page.get_by_role("link", name="Dataset exports", exact=True).click()
        page.get_by_role("link", name="Export DPO dataset").click()
        page.fill("#id_name", "loop-expert-v1")
        page.select_option("#id_policy", "expert")
        page.select_option("#id_format", "jsonl")
        page.select_option("#id_campaign", label=campaign.name)
        page.fill("#id_test_fraction", "0")
        page.click("input[name=_save]")
        page.locator(".messagelist").get_by_role("link", name="progress").click()
        wait_until_finished(page, "#job-progress", "the export")
        export = DatasetExport.objects.get()
        decided = Vote.objects.filter(expert=alice, choice__in=["a", "b"]).count()
        assert export.counts.get("train") == decided >= 1, (
            f"the export has {export.counts} rows for {decided} decided votes; card:\n{export.card}")
        page.goto("/admin/annotation/datasetexport/")
        page.get_by_role("link", name="loop-expert-v1").click()
        assert f"{decided} train · 0 test" in page.locator(".field-row_counts").inner_text()
        steps.done(f"export ({decided} train rows)")

        # --- 8. … starts a short training run and watches it finish -----------------------------------------------
        page.goto("/admin/")
        page.locator("tr.model-trainingrun a.addlink").click()
        page.select_option("#id_export", label=export.name)
        page.fill("#id_name", "loop run")
        page.fill("#id_max_steps", "2")
        page.fill("#id_gradient_accumulation_steps", "1")
        page.fill("#id_max_length", "1024")  # the prompt is ~710 tokens, a profile up to 256
        page.uncheck("#id_gradient_checkpointing")
        page.click("input[type=submit][value='Start training']")
        page.wait_for_url("**/training/runs/*/")
        wait_until_finished(page, "#run-live", "the training run")
        run = TrainingRun.objects.get()
        assert run.done == run.total == 2, (run.done, run.total, run.message)
        assert run.log_entries.count() == 2
        assert page.get_by_role("link", name="adapter.zip").is_visible()
        page.screenshot(path=str(shots / "4-training-run.png"), full_page=True)
        steps.done(f"training ({run.message})")

        # --- 9. … and evaluates the tuned model against its base on the held-out sample ---------------------------
        page.get_by_role("link", name="Evaluate against the base model…").click()
        assert page.locator("#id_training_run").input_value() == str(run.pk)
        page.select_option("#id_baseline", label=GENERATOR["name"])  # the tuned model copies its decoding
        page.select_option("#id_judge", label="smollm2-judge")
        page.fill("#id_sample_limit", "1")
        page.fill("#id_candidates", str(EVAL_CANDIDATES))
        page.click("input[type=submit][value='Start evaluation']")
        page.wait_for_url("**/training/evaluations/*/")
        wait_until_finished(page, "#evaluation-live", "the evaluation")
        evaluation = EvaluationRun.objects.get()
        valid, versus = evaluation.results["valid"], evaluation.results["versus"]["baseline"]
        assert valid["candidate"]["total"] == valid["baseline"]["total"] == EVAL_CANDIDATES, valid
        assert versus["comparison_ids"], f"no held-out pair had two valid profiles for the judge: {valid}"
        assert versus["with_forfeits"]["n"] == EVAL_CANDIDATES
        assert page.get_by_role("heading", name="Valid profiles", exact=True).is_visible()
        assert page.get_by_role("heading", name=f"Tuned vs {GENERATOR['name']}", exact=True).is_visible()
        assert Profile.objects.filter(sample__name=HELDOUT_SAMPLE, generator__source_run=run).count() == EVAL_CANDIDATES
        assert page.get_by_role("button", name="Send to experts").is_visible()
        page.screenshot(path=str(shots / "5-evaluation.png"), full_page=True)
        steps.done(f"evaluation ({evaluation.message})")
