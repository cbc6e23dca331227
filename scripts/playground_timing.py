"""The playground's targets, timed in Debian's Chromium through Playwright against a real
`tinyllm serve` of MODEL_URI (docs/playground.md#how-fast): the page's first contentful paint,
the first streamed character in the page against a plain HTTP client's first event for the
same request, and scoring a 2,000-character text (the API alone, and the page until its heat map is
built). Medians of five.

    python scripts/playground_timing.py MODEL_URI [--text FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from tinyllm.serving import launch

TINYLLM = str(Path(shutil.which("tinyllm") or "tinyllm"))
ROUNDS = 5
# Resolve once the page's text changed as asked: (box id, when done) as JavaScript.
UNTIL = """([box, button, count]) => new Promise((done) => {
    const target = document.getElementById(box);
    const start = performance.now();
    new MutationObserver((_, observer) => {
        if (target.querySelectorAll('span').length >= count) {
            observer.disconnect(); done(performance.now() - start); } })
      .observe(target, {childList: true, subtree: true});
    document.querySelector(button).click(); })"""


def post_ms(url: str, body: dict) -> float:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request) as reply:
        reply.read()
    return 1000 * (time.perf_counter() - start)


def first_event_ms(url: str, body: dict) -> float:
    """Time to the first server-sent event (it carries the first character), as curl -N
    would see it."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    start = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body),
                       {"Content-Type": "application/json"})
    reply = connection.getresponse()
    while not reply.readline().startswith(b"data: "):
        pass
    elapsed = 1000 * (time.perf_counter() - start)
    reply.read()
    connection.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_uri")
    parser.add_argument("--text", type=Path, help="a text of 2,000 characters or more "
                        "[default: this script, repeated]")
    args = parser.parse_args()
    text = (args.text.read_text() if args.text else Path(__file__).read_text() * 2)[:2000]
    log = Path(tempfile.mkstemp(prefix="playground-timing-", suffix=".log")[1])
    process, url = launch.start([TINYLLM, "serve", "--model-uri", args.model_uri,
                                 "--workers", "1"], log)
    try:
        launch.wait_until_up(f"{url}/health", process, log)
        with urllib.request.urlopen(f"{url}/v1/models") as reply:
            model = json.load(reply)["data"][0]["id"]
        stream = {"model": model, "prompt": "ROMEO:", "max_tokens": 50, "seed": 1,
                  "stream": True}
        times = {"paint": [], "first character (page)": [], "score (page)": []}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
            for _ in range(ROUNDS):
                page = browser.new_page()
                page.goto(f"{url}/")
                page.wait_for_selector("body[data-ready=true]")
                times["paint"].append(page.evaluate(
                    "performance.getEntriesByName('first-contentful-paint')[0].startTime"))
                page.fill("input[name=max_tokens]", "50")
                page.fill("input[name=seed]", "1")
                times["first character (page)"].append(
                    page.evaluate(UNTIL, ["completion", "#write-form button", 1]))
                page.wait_for_selector("#completion-info button")
                page.fill("#score-text", text)
                times["score (page)"].append(
                    page.evaluate(UNTIL, ["score-map", "#score-form button", len(text)]))
                page.close()
            browser.close()
        times["first character (HTTP)"] = [first_event_ms(url, stream) for _ in range(ROUNDS)]
        score = {"model": model, "prompt": text, "echo": True, "logprobs": 5, "max_tokens": 0}
        times["score (API)"] = [post_ms(f"{url}/v1/completions", score) for _ in range(ROUNDS)]
    finally:
        launch.stop(process)
    for name, values in times.items():
        print(f"{name:24} {statistics.median(values):7.0f} ms")


if __name__ == "__main__":
    main()
