"""The demo in a real browser: `hf-t2i demo` serves the app, headless Chromium (driven by selenium) loads the page,
types a prompt, clicks Generate, and every checkpoint's picture appears, with a progress bar while it is drawn; the
picture on the page is the one the checkpoint draws for that prompt and seed. An empty prompt shows an error instead.

Slow (a server start and five checkpoints: under a minute on 2 idle cores, minutes beside a training). Needs Chromium
and its driver, from Debian's packages: `apt-get install chromium chromium-driver`; then `make test-slow`, or
`pytest -m slow tests/test_demo_browser.py`. Without them the tests skip, saying so.
"""

import importlib.util
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from hf_t2i.checkpoints import SHIPPED_CHECKPOINTS
from hf_t2i.demo import DISPLAY_UPSCALE, DemoModels

from .test_shipped_checkpoints import SHIPPED


try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        webdriver is None or importlib.util.find_spec("gradio") is None,
        reason="gradio and selenium are not installed: pip install -e '.[dev]' -c constraints.txt",
    ),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="headless Chromium and its driver are not installed: apt-get install chromium chromium-driver (Debian)",
    ),
]

PROMPT = "two red circles"
SEED = 5
# Generous bounds, reached only when something is wrong: on a CPU shared with a training, importing torch and gradio
# and drawing with five checkpoints (loaded on first use, one at a time) can take minutes.
SERVER_START_S = 600
DRAWS_S = 600

# Records every progress text the page shows ("12/64 steps"), however briefly, from before the click on.
RECORD_PROGRESS = """
window.progressSeen = [];
new MutationObserver(() => {
  for (const element of document.querySelectorAll('.progress-text')) {
    const text = element.textContent.trim();
    if (/\\d+\\/\\d+/.test(text) && !window.progressSeen.includes(text)) window.progressSeen.push(text);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""
# [elem id, natural width, src] of every picture shown in a checkpoint's image box
SHOWN_PICTURES = """
return Array.from(document.querySelectorAll('[id^="image-"] img'))
  .filter(img => img.complete && img.naturalWidth > 0)
  .map(img => [img.closest('[id^="image-"]').id, img.naturalWidth, img.src]);
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """`hf-t2i demo` serving every shipped checkpoint on a free local port."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("demo") / "server.log"
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "hf_t2i.cli", "demo", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"`hf-t2i demo` exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`hf-t2i demo` did not answer at {url} in {SERVER_START_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    # the Debian driver, named explicitly: selenium never fetches a driver of its own
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, url: str):
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    prompt = wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#prompt input, #prompt textarea"))
    return prompt


def type_prompt(prompt_box, text: str) -> None:
    prompt_box.clear()
    prompt_box.send_keys(text)


def every_picture_shown(driver):
    """The shown pictures once every checkpoint's is there, else False (for `WebDriverWait.until`)."""
    pictures = driver.execute_script(SHOWN_PICTURES)
    return pictures if len(pictures) == len(SHIPPED_CHECKPOINTS) else False


def test_page_draws_every_checkpoint_with_a_progress_bar(demo_url, browser, tmp_path):
    prompt_box = open_page(browser, demo_url)
    type_prompt(prompt_box, PROMPT)
    seed_box = browser.find_element(By.CSS_SELECTOR, "#seed input")
    seed_box.clear()
    seed_box.send_keys(str(SEED))
    browser.execute_script(RECORD_PROGRESS)
    assert browser.execute_script(SHOWN_PICTURES) == []  # nothing drawn yet

    browser.find_element(By.ID, "generate").click()
    shown = WebDriverWait(browser, DRAWS_S, poll_frequency=0.5).until(every_picture_shown)
    browser.save_screenshot(str(tmp_path / "demo.png"))

    assert sorted(elem_id for elem_id, _, _ in shown) == sorted(
        f"image-{name.replace('-', '_')}" for name in SHIPPED_CHECKPOINTS
    )
    sizes = {f"image-{name.replace('-', '_')}": size for name, (_, size, _) in SHIPPED.items()}  # 32 or 64 px
    assert all(width == sizes[elem_id] * DISPLAY_UPSCALE for elem_id, width, _ in shown), shown
    progress = browser.execute_script("return window.progressSeen;")
    # e.g. "12/64 steps | 1.7s": DALL-E's and Parti's token-by-token progress (64 image tokens)
    assert any(re.match(r"\d+/64 steps", text) for text in progress), progress

    # the page shows exactly the picture the checkpoint draws for this prompt and seed
    src = {elem_id: src for elem_id, _, src in shown}["image-dalle"]
    with urllib.request.urlopen(src, timeout=30) as response:
        on_page = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
    drawn = DemoModels(["dalle"], device="cpu").generate("dalle", PROMPT, seed=SEED, guidance_scale=3.0)
    np.testing.assert_array_equal(on_page[::DISPLAY_UPSCALE, ::DISPLAY_UPSCALE], np.asarray(drawn))


def test_empty_prompt_shows_an_error_and_draws_nothing(demo_url, browser):
    prompt_box = open_page(browser, demo_url)
    type_prompt(prompt_box, "   ")
    browser.execute_script(RECORD_PROGRESS)
    browser.find_element(By.ID, "generate").click()
    toast = WebDriverWait(browser, 60).until(
        lambda driver: next((e for e in driver.find_elements(By.CSS_SELECTOR, ".toast-body") if e.text), None)
    )
    assert "`prompt` is empty" in toast.text
    time.sleep(2)  # a draw queued after the check would show its queue position at once
    assert browser.execute_script("return window.progressSeen;") == []
    assert browser.execute_script(SHOWN_PICTURES) == []
