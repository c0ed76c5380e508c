"""Real headless Chromium (Debian's, never a Playwright download) against pytest-django's live server."""

import pytest

from tests.conftest import PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# The laptop the screen is designed for.
VIEWPORT = {"width": 1366, "height": 800}


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module.

    While Playwright's sync API lives, its event loop is registered in the test thread, and Django takes
    every ORM call made there (the tests' own, the database flush after each test) for async code. Those
    calls are plain synchronous ones, so the guard is lifted, but only for that long: the variable must
    not leak into other tests (``check --deploy`` in a subprocess rightly refuses it).
    """
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    """A fresh browser tab on the live server; ``page.dialogs`` collects any alert() a page manages to run."""
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.dialogs = []

    def record(dialog):
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    # The site's Content-Security-Policy is on in these tests as in production: Chromium reports each thing it
    # refused on the console, and a test whose pages broke the policy fails.
    page.csp_violations = []
    page.on("console", lambda message: page.csp_violations.append(message.text)
            if "Content Security Policy" in message.text else None)
    yield page
    context.close()
    assert page.csp_violations == [], page.csp_violations


@pytest.fixture
def log_in(page):
    def log_in(user):
        page.goto("/accounts/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/")

    return log_in
