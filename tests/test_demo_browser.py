"""`upgen demo` in a real headless browser: Debian's Chromium driven by Playwright against
the command's server on the quickstart's runs (UPGen + CLIP scorer), trained in the test.

Runs where the demo extra and the browser are installed (`.ci/run` installs
requirements-demo-lock.txt and Debian's chromium in a step of their own; UPGEN_REQUIRE_DEMO=1
there makes a missing piece a failure); skipped elsewhere. Every request the page makes must
go to the local server: the test fails on any other.
"""
import io
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
if os.environ.get("UPGEN_REQUIRE_DEMO"):  # .ci/run sets it: a missing piece is a failure.
  import gradio  # pylint: disable=g-import-not-at-top,unused-import
  from playwright import sync_api  # pylint: disable=g-import-not-at-top
  assert os.path.exists(CHROMIUM), f"{CHROMIUM}: missing (apt-get install chromium)"
else:
  pytest.importorskip("gradio")
  sync_api = pytest.importorskip("playwright.sync_api")
  if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As a sandboxed root process on a machine without a network: no GPU, no background calls.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
PROMPT = "a small red circle on the left"
TIMEOUT_MS = 120_000


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_quickstart, tmp_path_factory):
  """`upgen demo` on the quickstart's UPGen run with its CLIP scorer; yields the page URL."""
  w, _ = tiny_quickstart
  port = _free_port()
  log = tmp_path_factory.mktemp("demo") / "server.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [sys.executable, "-m", "upgen.cli", "demo", "--workdir", str(w / "model"), "--scorer",
         str(w / "scorer"), "--port", str(port), "--max-samples", "8", "--batch-size", "4"],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}/"
  try:
    deadline = time.time() + 300
    while True:
      assert proc.poll() is None, log.read_text()
      try:
        urllib.request.urlopen(url, timeout=5).read()
        break
      except OSError:
        assert time.time() < deadline, f"no page at {url} after 300 s:\n{log.read_text()}"
        time.sleep(1)
    assert "compiled in" in log.read_text()  # Compiled before it served.
    yield url
  finally:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
  with sync_api.sync_playwright() as p:
    chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser, server):
  """A fresh page on the demo; afterwards, no request of it went anywhere but the server."""
  context = browser.new_context(viewport={"width": 1200, "height": 1000})
  page = context.new_page()
  page.set_default_timeout(TIMEOUT_MS)
  requests = []
  page.on("request", lambda r: requests.append(r.url))
  page.goto(server, wait_until="networkidle")
  yield page
  context.close()
  remote = [u for u in requests if urllib.parse.urlsplit(u).scheme in ("http", "https", "ws",
                                                                       "wss")
            and urllib.parse.urlsplit(u).hostname not in LOCAL_HOSTS]
  assert requests and not remote, remote


def _set_number(page, elem_id: str, value: int) -> None:
  box = page.locator(f"#{elem_id} input[type=number]")
  box.fill(str(value))
  box.press("Enter")


def _gallery_images(page, elem_id: str, count: int) -> list[np.ndarray]:
  """Waits for `count` images in the gallery, then fetches and decodes each (PNG)."""
  page.wait_for_function(
      f"document.querySelectorAll('#{elem_id} img').length === {count}", timeout=TIMEOUT_MS)
  out = []
  for src in page.locator(f"#{elem_id} img").evaluate_all("els => els.map(e => e.src)"):
    body = page.request.get(src).body()
    assert body[:8] == b"\x89PNG\r\n\x1a\n", src
    out.append(np.asarray(Image.open(io.BytesIO(body))))
  return out


def _status(page, elem_id: str, text: str) -> str:
  status = page.locator(f"#{elem_id}")
  sync_api.expect(status).to_contain_text(text, timeout=TIMEOUT_MS)
  return status.inner_text()


def test_generate_shows_the_samples_and_their_time(page):
  assert page.title() == "upgen demo: model"
  # The run's sampling settings, its own values as defaults.
  assert page.locator("#generate-setting-num_steps input").input_value() == "12"
  page.locator("#prompt textarea").fill(PROMPT)
  _set_number(page, "num-samples", 3)
  page.locator("#generate").click()
  images = _gallery_images(page, "generate-gallery", 3)
  assert all(x.shape == (32, 32, 3) for x in images)
  assert len({x.tobytes() for x in images}) > 1  # Three draws, not one image thrice.
  status = _status(page, "generate-status", "3 images in ")
  assert "(seed 0)" in status
  # Best of 2 by the scorer: each sample says its CLIP score.
  _set_number(page, "candidates", 2)
  _set_number(page, "num-samples", 2)
  page.locator("#generate").click()
  _status(page, "generate-status", "each the best of 2 by CLIP score")
  _gallery_images(page, "generate-gallery", 2)
  sync_api.expect(page.locator("#generate-gallery")).to_contain_text("1: CLIP ")


def test_bad_input_gets_a_message_not_a_trace(page):
  page.locator("#generate").click()  # No prompt.
  status = _status(page, "generate-status", "the prompt is empty")
  assert "Traceback" not in status and page.locator("#generate-gallery img").count() == 0
  page.locator("#prompt textarea").fill(PROMPT + " and a large blue square on the right")
  _set_number(page, "num-samples", 1)
  page.locator("#generate").click()
  _status(page, "generate-status", "the prompt is truncated to the model's 12 tokens")
  _gallery_images(page, "generate-gallery", 1)
  page.locator("#generate-setting-guidance_scale input").fill("-1")
  page.locator("#generate").click()
  _status(page, "generate-status", "config.sample.guidance_scale=-1.0: must be >= 0")


def test_image_to_text_resizes_what_it_is_given(page, tmp_path, tiny_quickstart):
  w, _ = tiny_quickstart
  source = sorted((w / "shapes" / "val" / "images").iterdir())[0]
  big = tmp_path / "big.png"  # 96 x 64: not the tokenizer's 32 x 32.
  Image.open(source).resize((96, 64)).save(big)
  page.get_by_role("tab", name="Image to text").click()
  page.locator("#caption").click()  # No image yet.
  _status(page, "caption-status", "no image: drop an image to caption first")
  page.locator("#caption-image input[type=file]").set_input_files(str(big))
  page.locator("#caption-image img").wait_for()
  _set_number(page, "num-captions", 3)
  page.locator("#caption").click()
  _status(page, "caption-status", "The image was 96x64: resized to 32x32")
  sync_api.expect(page.locator("#captions textarea")).not_to_have_value("", timeout=TIMEOUT_MS)
  captions = page.locator("#captions textarea").input_value().splitlines()
  assert len(captions) == 3 and all(c.strip() for c in captions)
  (seen,) = _gallery_images(page, "caption-gallery", 1)
  assert seen.shape == (32, 32, 3)


def test_inpaint_redraws_the_box(page, tiny_quickstart):
  w, _ = tiny_quickstart
  source = sorted((w / "shapes" / "val" / "images").iterdir())[0]
  page.get_by_role("tab", name="Inpaint").click()
  page.locator("#inpaint-prompt textarea").fill(PROMPT)
  page.locator("#inpaint-image input[type=file]").set_input_files(str(source))
  page.locator("#inpaint-image img").wait_for()
  _set_number(page, "inpaint-num-samples", 2)
  page.locator("#inpaint").click()
  _status(page, "inpaint-status", "32 of 64 token cells regenerated")
  assert all(x.shape == (32, 32, 3) for x in _gallery_images(page, "inpaint-gallery", 2))
  page.locator("#inpaint-x1 input").fill("40")
  page.locator("#inpaint").click()
  _status(page, "inpaint-status", "--region 0,0,40,32: need 0 <= X0 < X1 <= 32")


def test_the_screenshot_script_shoots_the_page(server, tmp_path):
  """scripts/demo_screenshot.py, which made docs/images/demo.png, on the same server."""
  out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "demo_screenshot.py"),
                        "--url", server, "--prompt", PROMPT, "--samples", "4", "--out",
                        str(tmp_path / "shot.png")], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert "requests, all to" in out.stdout
  width, height = Image.open(tmp_path / "shot.png").size
  assert width == 1100 and height >= 900
