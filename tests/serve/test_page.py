"""The web page in a real headless Chromium: upload a film, see the label and the heatmap."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxrguide.labels import CLASSES
from cxrguide.serve.app import create_app
from inference_helpers import film

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def test_upload_shows_label_probabilities_and_heatmap(browser, live_server, predictor, tmp_path):
    path = film(tmp_path / "chest.png")
    expected = predictor.predict_file(path)
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(live_server + "/")
    assert "Research tool, not a diagnosis" in page.inner_text("#disclaimer")
    page.wait_for_function("() => document.getElementById('model').textContent.includes('@')")
    assert predictor.run_id in page.inner_text("#model")
    page.set_input_files("#file", str(path))
    page.wait_for_function(
        "() => document.getElementById('label').textContent.length > 0", timeout=120_000
    )
    assert page.inner_text("#label") == expected.label
    shown = {
        row.get_attribute("data-cls"): row.inner_text() for row in page.query_selector_all(".bar")
    }
    assert list(shown) == list(CLASSES)
    for name, text in shown.items():
        assert f"{100 * expected.probabilities[name]:.1f} %" in text
    page.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0")
    src = page.get_attribute("#overlay", "src")
    assert src.startswith("data:image/png;base64,")
    size = page.evaluate(
        "(() => { const o = document.getElementById('overlay'); "
        "return [o.naturalWidth, o.naturalHeight]; })()"
    )
    assert size == [64, 64]
    # the heatmap is drawn in colour: red and blue channels differ somewhere on the picture
    spread = page.evaluate("""() => {
        const img = document.getElementById('overlay');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let best = 0;
        for (let i = 0; i < d.length; i += 4) best = Math.max(best, Math.abs(d[i] - d[i + 2]));
        return best;
    }""")
    assert spread > 30
    assert errors == []


def test_bad_file_shows_an_error(browser, live_server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an x-ray")
    page = browser.new_page()
    page.goto(live_server + "/")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("() => document.getElementById('status').className === 'error'")
    assert "not an image" in page.inner_text("#status")
    assert page.get_attribute("#result", "class") != "shown"


def test_page_asks_for_the_token_once(browser, predictor, serve, tmp_path):
    token = "page-token-0123456789"
    path = film(tmp_path / "chest.png")
    with serve(create_app(predictor, token=token)) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#keyform.shown")
        page.fill("#token", "wrong-token-0123456789")
        page.click("#usetoken")
        page.wait_for_function(
            "() => document.getElementById('keynote').textContent.includes('refused')"
        )
        page.fill("#token", token)
        page.click("#usetoken")
        page.wait_for_function("() => document.getElementById('model').textContent.includes('@')")
        assert page.get_attribute("#keyform", "class") == ""
        page.set_input_files("#file", str(path))
        page.wait_for_function(
            "() => document.getElementById('label').textContent.length > 0", timeout=120_000
        )
        assert page.inner_text("#label") == predictor.predict_file(path).label
        page.reload()  # the tab keeps the token: not asked again
        page.wait_for_function("() => document.getElementById('model').textContent.includes('@')")
        assert page.get_attribute("#keyform", "class") == ""
        assert page.evaluate("() => sessionStorage.getItem('cxrguide-token')") == token
