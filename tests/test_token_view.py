"""The live token view (javascript/initno.js) in a real headless Chromium, driven by Playwright.

A local server serves the test page tests/web/token_view.html (the A1111 DOM), the extension's script and
style.css, and answers POST /initno/v1/tokens with the real `initno.offline.read_prompt(...).as_json()`.
Needs Debian's chromium at /usr/bin/chromium (`make browser`) and the playwright package
(requirements-dev.txt); it never downloads a browser. Without them the tests fail, they do not skip.
"""

from __future__ import annotations

import json
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from initno.clip_bpe import ClipTokenizer
from initno.offline import read_prompt
from initno.subjects import SubjectError

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by the `browser` fixture as a failure
    sync_playwright = None

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE = "/tests/web/token_view.html"
SERVED = {"/style.css", "/javascript/initno.js", PAGE}
TIMEOUT_MS = 20_000
"""Only reached when something is wrong (or the machine is very busy): the passing path takes ~1 s a test."""


class TokenServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), partial(Handler, directory=str(REPO)))
        self.tokenizer = ClipTokenizer()
        self.requests: list[tuple[str, str, int]] = []
        self.answered: list[str] = []
        self.held: dict[str, threading.Event] = {}
        """Prompts whose answer waits until the test sets the event."""
        self.unsupported: str | None = None
        """What the route says when the loaded model is one InitNO skips."""

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(SimpleHTTPRequestHandler):
    server: TokenServer

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.split("?")[0] not in SERVED:
            self.send_error(404)
            return
        super().do_GET()

    def do_POST(self):
        if self.path != "/initno/v1/tokens":
            self.send_error(404)
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt, subjects, steps = body["prompt"], body["subjects"], body.get("steps", 20)
        self.server.requests.append((prompt, subjects, steps))
        if prompt in self.server.held:
            self.server.held[prompt].wait(TIMEOUT_MS / 1000)
        try:
            status, answer = 200, read_prompt(prompt, subjects, steps=steps, tokenizer=self.server.tokenizer).as_json()
            answer["unsupported"] = self.server.unsupported
        except (SubjectError, ValueError) as error:
            status, answer = 422, {"detail": str(error)}
        except Exception as error:  # shown in the page, so that a failing test says what went wrong
            status, answer = 500, {"detail": f"server error: {error!r}"}
        self.server.answered.append(prompt)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    httpd = TokenServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    for event in httpd.held.values():
        event.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.fail("the playwright package is missing: pip install -r requirements-dev.txt", pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium is missing at {CHROMIUM}: run `make browser` (apt-get install chromium)", pytrace=False)
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, server, query=""):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    server.requests.clear()
    server.answered.clear()
    page.goto(server.origin + PAGE + query)
    return page


@pytest.fixture
def page(browser, server):
    page = open_page(browser, server)
    yield page
    page.close()
    assert page.errors == []


def prompt_box(page):
    return page.locator("#txt2img_prompt textarea")


def subjects_box(page):
    return page.locator("#initno_txt2img_subjects textarea")


def words(page):
    return page.locator(".initno-word")


def word(page, text):
    return page.locator(".initno-word", has_text=re.compile(rf"^{re.escape(text)}\d+$"))


def settle(page):
    """Wait (checking every frame) until no request is in flight or waiting for the debounce."""
    page.wait_for_function("() => !window.initnoTokenView.busy")


def expect_words(page, listing: str, selector=".initno-word", *, settled=True):
    """`listing` as "a#1 cat#2": each word's text and first position, as rendered (text + superscript)."""
    if settled:
        settle(page)
    expected = [item.replace("#", "") for item in listing.split()]
    expect(page.locator(selector)).to_have_text(expected)


def test_words_positions_and_automatic_subjects(page, server):
    text = "a cat and a red apple"
    prompt_box(page).press_sequentially(text)
    expect_words(page, "a#1 cat#2 and#3 a#4 red#5 apple#6")
    expect(page.locator(".initno-position")).to_have_text(["1", "2", "3", "4", "5", "6"])
    expect_words(page, "cat#2 apple#6", ".initno-subject")
    expect_words(page, "cat#2 apple#6", ".initno-subject.initno-auto")
    expect(word(page, "cat")).to_have_attribute("aria-pressed", "true")
    expect(word(page, "red")).to_have_attribute("aria-pressed", "false")
    # debounced: one request per pause in typing, not one per keystroke
    assert server.requests[-1] == (text, "", 30)  # with the txt2img steps
    assert len(server.requests) <= 3


def test_typed_subjects_and_clicks(page):
    prompt_box(page).fill("a cat and a red apple")
    subjects_box(page).fill("cat, apple")
    expect_words(page, "cat#2 apple#6", ".initno-subject")
    expect(page.locator(".initno-auto")).to_have_count(0)

    word(page, "red").click()
    expect(subjects_box(page)).to_have_value("cat, apple, red")
    assert page.evaluate("window.subjectInputs.at(-1)") == "cat, apple, red"
    expect_words(page, "cat#2 red#5 apple#6", ".initno-subject")

    word(page, "cat").click()
    expect(subjects_box(page)).to_have_value("apple, red")
    assert page.evaluate("window.subjectInputs.at(-1)") == "apple, red"
    expect_words(page, "red#5 apple#6", ".initno-subject")
    expect(page.locator(".initno-auto")).to_have_count(0)


def test_click_starts_from_the_automatic_subjects(page):
    prompt_box(page).fill("a cat and a red apple")
    expect_words(page, "cat#2 apple#6", ".initno-auto")
    word(page, "red").click()
    expect(subjects_box(page)).to_have_value("cat, apple, red")
    expect_words(page, "cat#2 red#5 apple#6", ".initno-subject")
    expect(page.locator(".initno-auto")).to_have_count(0)


def test_click_removes_a_phrase_subject_covering_the_word(page):
    prompt_box(page).fill("a cat and a red apple")
    subjects_box(page).fill(" Cat ,red apple")
    expect_words(page, "cat#2 red#5 apple#6", ".initno-subject")
    word(page, "apple").click()
    expect(subjects_box(page)).to_have_value("Cat")
    word(page, "cat").click()
    expect(subjects_box(page)).to_have_value("")
    expect_words(page, "cat#2 apple#6", ".initno-auto")  # back to the automatic choice


def test_subject_not_in_the_prompt_shows_the_error(page):
    prompt_box(page).fill("a cat and a red apple")
    subjects_box(page).fill("cat, horse")
    error = page.locator(".initno-error")
    settle(page)
    expect(error).to_contain_text("subject 'horse' is not in the prompt")
    expect(error).to_contain_text("a#1, cat#2, and#3, a#4, red#5, apple#6")
    expect(words(page)).to_have_count(0)
    subjects_box(page).fill("cat")
    settle(page)
    expect(error).to_have_count(0)
    expect_words(page, "cat#2", ".initno-subject")


@pytest.mark.parametrize(
    "reason",
    [
        "SDXL refiner checkpoints are not supported; load an SDXL base checkpoint",
        "token merging is on; set Settings → Optimizations → Token merging ratio to 0",
    ],
)
def test_a_reason_to_skip_is_named_under_the_words(page, server, reason):
    """Whatever the route knows before generating (initno.webui.routes): the model, token merging."""
    server.unsupported = reason
    try:
        prompt_box(page).fill("a cat and a dog")
        settle(page)
        expect_words(page, "cat#2 dog#5", ".initno-auto")
        expect(page.locator(".initno-error")).to_have_text(f"InitNO will be skipped: {server.unsupported}")
    finally:
        server.unsupported = None


def test_a_word_of_several_tokens_is_one_word(page):
    prompt_box(page).fill("a hippopotamus and a cat")
    expect_words(page, "a#1 hippopotamus#2 and#5 a#6 cat#7")
    expect(word(page, "hippopotamus")).to_have_attribute("title", re.compile(r"^positions 2, 3, 4\b"))
    expect_words(page, "hippopotamus#2 cat#7", ".initno-auto")


def test_a_stale_answer_does_not_overwrite_a_newer_one(page, server):
    slow = "a slow dog"
    server.held[slow] = threading.Event()
    with page.expect_request(lambda request: slow in (request.post_data or "")):
        prompt_box(page).fill(slow)
    prompt_box(page).fill("a quick cat")
    expect_words(page, "a#1 quick#2 cat#3", settled=False)  # while the slow answer is still held
    server.held[slow].set()
    settle(page)
    assert slow in server.answered
    assert server.answered.index(slow) > server.answered.index("a quick cat")
    expect_words(page, "a#1 quick#2 cat#3")


def test_with_the_webui_globals_and_a_shadow_root(browser, server):
    """A1111's gradioApp(), onUiLoaded() and updateInput(); the UI is built after the page has loaded."""
    page = open_page(browser, server, "?a1111")
    prompt_box(page).fill("a cat and a dog")
    expect_words(page, "cat#2 dog#5", ".initno-auto")
    word(page, "dog").click()
    expect(subjects_box(page)).to_have_value("cat")
    assert page.evaluate("window.updateInputCalls") == 1
    assert page.evaluate("window.subjectInputs") == ["cat"]
    expect_words(page, "cat#2", ".initno-subject")
    page.close()
    assert page.errors == []


def test_a_pasted_infotext_is_followed_without_an_input_event(page, server):
    """Pasting an infotext (or "Send to txt2img") sets the boxes without an input event, as gradio does.
    Pasting one without InitNO also clears the subjects (initno.webui.ui.paste_fields): the view then
    shows the new prompt with its automatic subjects, and no request carries the old subjects."""
    prompt_box(page).fill("a cat and a horse")
    subjects_box(page).fill("horse")
    expect_words(page, "horse#5", ".initno-subject")
    page.evaluate(
        """() => {
            document.querySelector("#txt2img_prompt textarea").value = "a cat and a dog";
            document.querySelector("#initno_txt2img_subjects textarea").value = "";
        }"""
    )
    expect_words(page, "cat#2 dog#5", ".initno-auto")
    settle(page)
    expect(page.locator(".initno-error")).to_have_count(0)
    assert ("a cat and a dog", "horse", 30) not in server.requests
    assert page.evaluate("window.subjectInputs") == ["horse"]  # the view itself typed nothing
