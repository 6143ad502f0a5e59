"""The review page in headless Chromium (Debian's chromium through Playwright, as the report check): a
reviewer's session with the keyboard, a reload, a species filter, undo and a Raven export, with no
console error; the screenshot is saved to tmp_path and to /tmp/review_shot.png."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from dawnchorus.io.annotations import read_raven_table
from dawnchorus.io.verdicts import read_verdicts
from tests.browser_check import CHROMIUM, CHROMIUM_FLAGS, require_browser
from tests.review_run import Server, predicted_run

SHOT = Path("/tmp/review_shot.png")
# The keys of the ten verdicts given, in order ("o" asks for the species heard: typed, then Enter).
KEYS = ["p", "a", "p", "u", "p", "a", "o", "p", "a", "p"]
VERDICT_OF = {"p": "present", "a": "absent", "u": "unsure", "o": "other"}


@pytest.mark.slow
def test_review_ten_items_with_the_keyboard_reload_filter_undo_and_export(
    model_file: Path, tmp_path: Path
) -> None:
    require_browser()
    from playwright.sync_api import sync_playwright

    results = predicted_run(tmp_path, model_file)
    server = Server(results, "--reviewer", "ana")
    errors: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_FLAGS))
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("#items li").count() == 54  # 3 recordings x 6 windows x 3 labels

            page.keyboard.press("c")  # the window with its context plays
            page.wait_for_function("document.getElementById('player').src.includes('context=1')")
            page.wait_for_function("document.getElementById('player').readyState >= 1")

            reviewed = []
            for index, key in enumerate(KEYS):
                item_id = page.locator("#items li.current").get_attribute("data-id")
                reviewed.append(item_id)
                if index == 2:  # a note on the third
                    page.keyboard.press("n")
                    page.keyboard.type("faint, far away")
                    page.keyboard.press("Enter")
                page.keyboard.press(key)
                if key == "o":
                    page.wait_for_selector("#other-box:not([hidden])")
                    page.keyboard.type("norcar")
                    page.keyboard.press("Enter")
                page.wait_for_selector(f"#items li[data-id='{item_id}'] .badge.v-{VERDICT_OF[key]}")
                assert page.locator("#other-box").is_hidden()  # shown only while naming another species
            stored = read_verdicts(results)  # each verdict is in the store as soon as it shows
            assert stored["item_id"].tolist() == reviewed
            assert stored["verdict"].tolist() == [VERDICT_OF[k] for k in KEYS]
            assert stored.set_index("item_id").loc[reviewed[6], "other_label"] == "norcar"
            assert stored.set_index("item_id").loc[reviewed[2], "note"] == "faint, far away"
            assert set(stored["reviewer"]) == {"ana"}

            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("#items li .badge[class*='v-']").count() == 10  # kept
            assert page.locator("#progress-rows td").count() == 3 * 7

            page.select_option("#species", "bbb")
            page.wait_for_function(
                "[...document.querySelectorAll('#items li b')].every(b => b.textContent.startsWith('bbb '))"
            )
            assert page.locator("#items li").count() == 18
            assert "species=bbb" in page.url

            last = reviewed[-1]
            page.keyboard.press("z")  # undo the last verdict (given before the reload)
            page.wait_for_selector("#status:has-text('undone')")
            after = read_verdicts(results)
            assert len(after) == 9 and last not in set(after["item_id"])

            with page.expect_download() as download:
                page.click("#export-raven")
            raven = tmp_path / "export.selections.txt"
            download.value.save_as(raven)
            table = read_raven_table(raven)
            confirmed = after[after["verdict"].isin(["present", "other"])].sort_values(["file", "start_s"])
            assert len(table) == len(confirmed) == 5
            assert sorted(zip(table["Begin Path"], table["File Offset (s)"], strict=True)) == sorted(
                zip(confirmed["file"], confirmed["start_s"], strict=True)
            )
            assert "norcar" in set(table["Species Code"])

            page.select_option("#species", "")
            page.wait_for_function("document.querySelectorAll('#items li').length === 54")
            current = page.locator("#items li.current").get_attribute("data-id")
            other = page.locator(".label-row:has(button)").first  # another label of the same window
            other_label = other.get_attribute("data-label")
            other.locator("button[data-label-verdict='present']").click()
            page.wait_for_selector(f".label-row[data-label='{other_label}'] .badge.v-present")
            window = current.rsplit(":", 1)[0]
            newest = read_verdicts(results).iloc[-1]
            assert (newest["item_id"], newest["label"]) == (f"{window}:{other_label}", other_label)
            assert page.locator("#items li.current").get_attribute("data-id") == current  # stays
            page.wait_for_selector(f"#items li[data-id='{window}:{other_label}'] .badge.v-present")
            page.wait_for_function("document.getElementById('c-spec').naturalWidth > 0")
            page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
            browser.close()
    finally:
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=60)
    shutil.copy2(tmp_path / "review.png", SHOT)
    assert errors == []
