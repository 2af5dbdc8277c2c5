"""`promptseg app` in a real browser: headless Chromium (Debian's chromium + chromium-driver) through selenium.

Starts the app on a free loopback port with a tiny model, uploads a file that is not an image (the page says
so and keeps serving), then a test image, types a prompt and a scale, runs it, reads back the summary, the
measurements table, the downloaded mask and measurements JSON, and checks the mask equals `promptseg
predict`'s for the same image and threshold. Saves a screenshot to docs/app.png.
"""

import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import PROMPTS, TINY_MODEL, predict_argv

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
PROMPT = "segment wall crack"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="no headless browser: apt-get install -y chromium chromium-driver (.ci/run installs them)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, processed_root):
    pytest.importorskip("gradio")
    pytest.importorskip("selenium")
    from promptseg.images import load_split
    from promptseg.infer.recipe import Recipe
    from promptseg.infer.torch_engine import load_trained_model
    from promptseg.modeling.clipseg import build_small_model
    from promptseg.serve.app import launch, load_app_model

    root = tmp_path_factory.mktemp("app")
    model_dir = root / "tiny"
    model, processor = build_small_model(TINY_MODEL, 64, 0)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    (model_dir / "promptseg.json").write_text(json.dumps({"rung": "tiny", "prompts": PROMPTS}))
    images = root / "images"
    images.mkdir()
    data = load_split(processed_root, "cracks", "test")
    image_path = images / "wall_test.png"
    cv2.imwrite(str(image_path), cv2.cvtColor(data.images[0], cv2.COLOR_RGB2BGR))
    # a recipe threshold inside this untrained model's probabilities (a multiple of the slider's 0.01 step)
    probs = load_trained_model(model_dir).whole_image_probabilities([data.images[0]], [PROMPT])[0]
    threshold = float(np.round(np.quantile(probs, 0.7), 2))
    eval_json = root / "tiny.json"
    eval_json.write_text(
        json.dumps({"cracks": {"threshold": threshold, "recipe": Recipe(threshold=threshold).to_dict()}})
    )

    app = load_app_model(model_dir, engine="torch", eval_path=eval_json, images=images, threads=2)
    port = _free_port()
    demo = launch(app, host="127.0.0.1", port=port, block=False)
    yield {
        "url": f"http://127.0.0.1:{port}/",
        "model": model_dir,
        "image": image_path,
        "eval": eval_json,
        "threshold": threshold,
        "root": root,
    }
    demo.close()


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


def headless_chromium():
    """Debian's Chromium, headless, through selenium (also used by docs/app_screenshot.py)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1500",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


def _wait(predicate, timeout=60.0, what="the page"):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001, S110 -- elements re-render while Gradio updates
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _upload(driver, path: Path):
    from selenium.webdriver.common.by import By

    clear = driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear'], #upload button[title='Clear']")
    if clear:
        clear[0].click()
        time.sleep(0.5)
    field = _wait(lambda: driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]"), what="the upload field")
    field.send_keys(str(path))
    _wait(lambda: path.stem in driver.find_element(By.ID, "upload").text, what=f"{path.name} to upload")


_SUMMARY_JS = """
const el = document.getElementById('summary');
const tracker = el.querySelector('[data-testid=status-tracker]');
const copy = el.cloneNode(true);
copy.querySelectorAll('[data-testid=status-tracker]').forEach(e => e.remove());
return [tracker === null || tracker.classList.contains('hide'), copy.innerText];
"""


def _segment(driver):
    """Click Segment; the summary's text once the request is done (its status tracker hidden, new text)."""
    from selenium.webdriver.common.by import By

    _, before = driver.execute_script(_SUMMARY_JS)
    driver.find_element(By.ID, "segment").click()

    def done():
        idle, text = driver.execute_script(_SUMMARY_JS)
        return idle and text.strip() and text != before and text

    return _wait(done, what="the summary")


def test_upload_prompt_measure_download_equals_predict(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from promptseg.serve.cli import main
    from promptseg.serve.measure import measure_mask

    browser.get(served["url"])
    _wait(lambda: browser.find_element(By.ID, "segment"), what="the app to load")
    note = browser.find_element(By.ID, "threshold_note").text
    assert f"threshold {served['threshold']:g}" in note

    # a file that is not an image: a message on the page, and the app keeps serving
    bad = tmp_path / "not_a_photo.jpg"
    bad.write_bytes(b"this is not a jpeg" * 20)
    _upload(browser, bad)
    assert "Could not read not_a_photo.jpg as an image" in _segment(browser)

    _upload(browser, served["image"])
    prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys(PROMPT)
    prompt.send_keys(Keys.TAB)
    # the slider follows the typed prompt: wait for it before segmenting (a click would send the old value)
    _wait(
        lambda: (
            f"threshold {served['threshold']:g}: evaluation's recipe for dataset 'cracks'"
            in browser.find_element(By.ID, "threshold_note").text
        ),
        what="the threshold note",
    )
    scale = browser.find_element(By.CSS_SELECTOR, "#scale input")
    scale.send_keys(Keys.CONTROL, "a")
    scale.send_keys("0.1")
    scale.send_keys(Keys.TAB)
    time.sleep(0.5)
    summary = _segment(browser)
    assert "Error" not in summary, summary
    assert f"threshold {served['threshold']:g}: evaluation's recipe for dataset 'cracks'" in summary
    assert "BRE Digest 251 category" in summary

    # the downloads: mask PNG and measurements JSON
    def link(elem_id):
        anchors = browser.find_elements(By.CSS_SELECTOR, f"#{elem_id} a")
        return next((a.get_attribute("href") for a in anchors if a.get_attribute("href")), None)

    mask_url = _wait(lambda: link("mask_file"), what="the mask download link")
    json_url = _wait(lambda: link("json_file"), what="the JSON download link")
    mask = cv2.imdecode(
        np.frombuffer(urllib.request.urlopen(mask_url, timeout=30).read(), np.uint8), cv2.IMREAD_UNCHANGED
    )
    measurements = json.loads(urllib.request.urlopen(json_url, timeout=30).read())

    out = tmp_path / "predict"
    assert (
        main(
            predict_argv(
                str(served["model"]),
                str(served["image"]),
                out=str(out),
                prompt=PROMPT,
                extra=["--eval-metrics", str(served["eval"]), "--quiet"],
            )
        )
        == 0
    )
    predicted = cv2.imread(str(out / "wall_test__segment-wall-crack.png"), cv2.IMREAD_UNCHANGED)
    assert 0 < (predicted > 0).mean() < 1
    assert np.array_equal(mask, predicted)

    expected = measure_mask(predicted, mm_per_px=0.1)
    assert measurements["measurements"]["image"] == expected["image"]
    assert measurements["recipe"]["threshold"] == served["threshold"]
    table = browser.find_element(By.ID, "table").text
    first = expected["components"][0]
    assert f"{first['length_mm']:.2f}".rstrip("0").rstrip(".") in table

    shot = tmp_path / "app.png"
    browser.save_screenshot(str(shot))
    # the README's screenshot: written when missing or asked for (PROMPTSEG_SCREENSHOT=1), so that a test run
    # does not rewrite a committed file every time
    target = REPO / "docs" / "app.png"
    if target.parent.is_dir() and (not target.exists() or os.environ.get("PROMPTSEG_SCREENSHOT") == "1"):
        shutil.copyfile(shot, target)


def test_an_unseen_prompt_says_its_threshold_is_the_fallback(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(served["url"])
    prompt = _wait(lambda: browser.find_element(By.CSS_SELECTOR, "#prompt textarea"), what="the prompt box")
    prompt.send_keys(Keys.CONTROL, "a")
    prompt.send_keys("segment a cat")
    prompt.send_keys(Keys.TAB)
    note = _wait(
        lambda: (t := browser.find_element(By.ID, "threshold_note").text) and "fallback" in t and t,
        what="the fallback note",
    )
    assert "threshold 0.5" in note and "'segment a cat' is not one of the model's training prompts" in note
