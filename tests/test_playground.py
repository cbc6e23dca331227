"""The playground at `/` of `tinyllm serve`, in a real browser: Playwright drives Debian's Chromium
against a real server of a tiny registered model (two versions, the champion alias on the first),
and the tests read what a person sees (the text, the tooltips, the colours, the numbers). No
request may leave the local server. Without Chromium they skip, saying how to install it
(docs/development.md)."""

from __future__ import annotations

import colorsys
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_project import copy_store, register_packages, untrained_package

from tinyllm.cli import cli
from tinyllm.package import load_package
from tinyllm.serving import launch
from tinyllm.serving.requests import Message, chat_prompt
from tinyllm.tracking.store import Store

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (docs/development.md)")
PROMPT = "ROMEO:\n"
TEXT = "ROMEO:\nlove night light sweet death.\n\nJULIET:\nfair heaven hath thou doth.\n"
TINYLLM = str(Path(sys.executable).with_name("tinyllm"))


@dataclass
class Registered:
    store: Store
    packages: list[Path]  # version i + 1's
    runs: list[str]  # the run of version i + 1


@pytest.fixture(scope="module")
def registered(tmp_path_factory, store_template) -> Registered:
    directory = tmp_path_factory.mktemp("playground")
    uri = copy_store(store_template, directory)
    packages = [untrained_package(directory / f"v{seed + 1}", seed=seed) for seed in (0, 1)]
    runs = register_packages(uri, "tiny", packages)
    store = Store(uri)
    store.client.set_registered_model_alias("tiny", "champion", "1")
    return Registered(store, packages, runs)


@pytest.fixture(scope="module")
def package(registered) -> Path:
    """The champion's package: what the page's requests get."""
    return registered.packages[0]


@pytest.fixture(scope="module")
def server(registered):
    log = Path(tempfile.mkstemp(prefix="tinyllm-serve-", suffix=".log")[1])
    process, url = launch.start(
        [TINYLLM, "serve", "--model-uri", "models:/tiny@champion", "--workers", "1",
         "--refresh-seconds", "0.2"], log,
        {**os.environ, "MLFLOW_TRACKING_URI": registered.store.uri})
    launch.wait_until_up(f"{url}/health", process, log)
    yield url
    launch.stop(process)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """The playground, loaded and ready; after the test, no request went anywhere else."""
    context = browser.new_context()
    elsewhere = []
    context.on("request", lambda r: r.url.startswith(f"{server}/") or elsewhere.append(r.url))
    page = context.new_page()
    page.goto(f"{server}/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    assert elsewhere == [], f"requests left the local server: {elsewhere}"


def press(page, button: str) -> None:
    page.get_by_role("button", name=button, exact=True).click()


def hue(css_colour: str) -> float:
    red, green, blue = (int(v) / 255 for v in re.findall(r"\d+", css_colour)[:3])
    return colorsys.rgb_to_hls(red, green, blue)[0]


def percents(text: str) -> list[float]:
    return [float(p) for p in re.findall(r"([\d.]+)%", text)]


def compare_bits(tmp_path: Path, a: Path, b: Path, text: str) -> tuple[float, float]:
    """The bits per character `tinyllm compare` gives text under a and under b."""
    (tmp_path / "text.txt").write_text(text)
    result = CliRunner().invoke(cli, ["compare", str(a), str(b), "--text",
                                      str(tmp_path / "text.txt"), "--block", "4", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    return found["a_bits_per_char"], found["b_bits_per_char"]


def test_a_completion_streams_coloured_by_probability_and_its_seed_replays_it(page, package):
    page.fill("#prompt", PROMPT)
    page.fill("input[name=max_tokens]", "30")
    page.fill("#stops input >> nth=0", "")
    with page.expect_response("**/v1/completions") as streamed:
        press(page, "Generate")
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    assert streamed.value.text().count("data: ") > 2  # the text came in pieces
    replay = page.get_by_role("button", name=re.compile("Replay seed"))
    replay.wait_for()
    seed = int(re.search(r"seed (\d+)", page.inner_text("#completion-info"))[1])
    text = page.inner_text("#completion")
    assert text == load_package(package).generate(PROMPT, seed=seed, max_tokens=30)

    page.focus("#completion span[data-index='0']")  # the keyboard walks the characters
    seen = []  # (probability the tooltip shows, hue of the character's background)
    for _ in range(len(text)):
        tip = page.inner_text("#tip")
        colour = page.evaluate("document.activeElement.style.backgroundColor")
        seen.append((percents(tip.splitlines()[0])[0], hue(colour)))
        page.keyboard.press("ArrowRight")
    seen.sort()
    assert [h for _, h in seen] == sorted(h for _, h in seen)  # likelier is greener
    assert seen[0][0] < seen[-1][0]

    page.hover("#completion span[data-index='3']")
    tip = page.inner_text("#tip")
    alternatives = percents(tip.split("Alternatives:")[1])
    assert len(alternatives) == 5 and alternatives == sorted(alternatives, reverse=True)

    replay.click()
    page.wait_for_function("document.querySelector('#completion-info button') !== null")
    assert page.inner_text("#completion") == text


def test_chat_streams_the_reply_generate_gives_the_script(page, package):
    page.fill("#chat-name", "ROMEO")
    page.fill("#chat-message", "But soft")
    page.fill("input[name=max_tokens]", "20")
    press(page, "Send")
    page.locator("#chat-log .assistant button").wait_for()
    seed = int(re.search(r"seed (\d+)", page.inner_text("#chat-log .assistant .reply-info"))[1])
    prompt = chat_prompt([Message(role="user", name="ROMEO", content="But soft")])
    expected = load_package(package).generate(prompt, ["\n\n"], seed=seed, max_tokens=20)
    assert page.inner_text("#chat-log .assistant .text") == expected
    assert page.inner_text("#chat-log .user .text") == "But soft"


def test_scoring_shows_the_bits_per_char_of_tinyllm_compare(page, package, tmp_path):
    page.fill("#score-text", TEXT)
    press(page, "Score")
    page.wait_for_selector("#score-map span[data-index]")
    shown = float(page.inner_text("#score-result").split(" bits")[0])
    assert abs(shown - compare_bits(tmp_path, package, package, TEXT)[0]) < 1e-4
    assert page.locator("#score-map span[data-index]").count() == len(TEXT)
    page.hover("#score-map span[data-index='0']")
    assert "unscored" in page.inner_text("#tip")
    page.hover("#score-map span[data-index='5']")
    assert "bits" in page.inner_text("#tip")


def test_the_attention_view_shows_each_head_and_where_a_character_looked(page, server):
    text = "ROMEO: But"
    page.fill("#attention-text", text)
    press(page, "Show attention")
    page.wait_for_selector("#heads button")
    assert page.locator("#heads canvas").count() == 2  # the tiny model: 1 layer, 2 heads
    page.click("#heads button >> nth=1")
    page.hover("#attention-map span[data-index='6']")
    lines = page.inner_text("#tip").splitlines()
    request = urllib.request.Request(f"{server}/v1/attention", json.dumps(
        {"model": "tiny", "text": text}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as reply:
        row = json.load(reply)["weights"][0][1][6]
    most = max(range(len(row)), key=row.__getitem__)
    assert lines[0] == "'␣' looked at:" and f"(character {most + 1})" in lines[1]
    later = page.locator("#attention-map span[data-index='8']")
    assert later.evaluate("s => s.style.backgroundColor") == ""  # nothing after it


def served_version(server: str) -> str:
    with urllib.request.urlopen(f"{server}/v1/models") as reply:
        return json.load(reply)["data"][0]["version"]


def test_two_versions_side_by_side_and_the_page_follows_the_alias_and_links_the_run(
        page, server, registered, tmp_path):
    info = page.inner_text("#model-info")
    run = registered.runs[0]
    assert info == ("Model tiny · version models:/tiny/1 · served as models:/tiny@champion, "
                    f"followed to each new version · aliases: champion · trained by run {run} "
                    "in mlflow ui (after `mlflow ui` in the project root)")
    experiment = registered.store.client.get_run(run).info.experiment_id
    assert page.get_attribute("#model-info a", "href") == (
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run}"
        "?workflowType=machine_learning")

    assert page.input_value("#model-a") == "tiny" and page.input_value("#model-b") == "tiny/latest"
    page.fill("#compare-prompt", PROMPT)
    page.fill("#compare-text", TEXT)
    page.fill("input[name=max_tokens]", "20")
    page.fill("input[name=seed]", "7")
    page.fill("#stops input >> nth=0", "")
    press(page, "Compare")
    for side in "ab":
        page.wait_for_function(f"document.getElementById('info-{side}').textContent"
                               ".includes('the text')")
    bits = compare_bits(tmp_path, *registered.packages, TEXT)
    for side, package, version, text_bits in zip("ab", registered.packages, (1, 2), bits,
                                                 strict=True):
        shown = page.inner_text(f"#info-{side}")
        assert shown.startswith(f"seed 7 · models:/tiny/{version} · its reply: "), shown
        assert abs(float(re.search(r"the text: ([\d.]+)", shown)[1]) - text_bits) < 1e-4
        expected = load_package(package).generate(PROMPT, seed=7, max_tokens=20)
        assert page.inner_text(f"#reply-{side}") == expected
    assert bits[0] != bits[1]

    def champion(version: str) -> None:  # and wait until the server follows
        registered.store.client.set_registered_model_alias("tiny", "champion", version)
        deadline = time.monotonic() + 20
        while served_version(server) != f"models:/tiny/{version}":
            assert time.monotonic() < deadline, "the server kept the old version"
            time.sleep(0.1)

    champion("2")
    try:
        press(page, "Generate")  # its reply comes from version 2: the page reads the models again
        page.wait_for_function("document.getElementById('model-info').textContent"
                               ".includes('version models:/tiny/2')")
    finally:
        champion("1")


def test_axe_core_finds_no_accessibility_violations(page):
    from axe_playwright_python.sync_playwright import Axe

    press(page, "Generate")
    press(page, "Score")
    page.wait_for_selector("#score-map span[data-index]")
    results = Axe().run(page)
    assert results.response["passes"]  # it ran its checks
    assert results.violations_count == 0, results.generate_report()
