"""Regenerate docs/app.png: the app serving the pipeline's trained U-Net on a synthetic test photo.

    .venv/bin/python docs/app_screenshot.py [--model models/unet] [--image data/processed/cracks/test/images/<file>]

Needs `make repro` (the model and its recipe in metrics/eval/<rung>.json) and Debian's chromium +
chromium-driver. It drives the page the way tests/test_app_browser.py does (upload, prompt, scale,
Segment) and saves the browser window.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_app_browser import _segment, _upload, _wait, headless_chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/unet")
    parser.add_argument("--image", default=None, help="default: the first cracks test photo")
    parser.add_argument("--prompt", default="segment wall crack")
    parser.add_argument("--mm-per-px", default="0.2")
    parser.add_argument("--out", default=str(REPO / "docs" / "app.png"))
    args = parser.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from promptseg.serve.app import launch, load_app_model

    images = REPO / "data" / "processed" / "cracks" / "test" / "images"
    image = Path(args.image) if args.image else sorted(images.iterdir())[0]
    app = load_app_model(Path(args.model), engine="torch", images=images, threads=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(app, host="127.0.0.1", port=port, block=False)
    driver = headless_chromium()
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        _wait(lambda: driver.find_element(By.ID, "segment"), what="the app to load")
        _upload(driver, image)
        prompt = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
        prompt.send_keys(Keys.CONTROL, "a")
        prompt.send_keys(args.prompt)
        prompt.send_keys(Keys.TAB)
        scale = driver.find_element(By.CSS_SELECTOR, "#scale input")
        scale.send_keys(Keys.CONTROL, "a")
        scale.send_keys(args.mm_per_px)
        scale.send_keys(Keys.TAB)
        time.sleep(1.0)  # the threshold slider follows the prompt
        print(_segment(driver))
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        demo.close()


if __name__ == "__main__":
    main()
