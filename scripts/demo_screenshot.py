"""A screenshot of a running `upgen demo` page after one generate request, in headless
Chromium (Debian's /usr/bin/chromium, driven by Playwright: the demo extra's lock has it).

  upgen demo --workdir runs/quickstart/model --scorer runs/quickstart/scorer --port 7860 &
  python scripts/demo_screenshot.py --url http://127.0.0.1:7860 \
      --prompt "a small red circle on the left" --samples 8 --out docs/images/demo.png

Every request the page makes must be to the local server; the script says so or fails.
"""
import argparse
import sys
import urllib.parse

from playwright import sync_api

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--url", default="http://127.0.0.1:7860")
  parser.add_argument("--prompt", required=True)
  parser.add_argument("--samples", type=int, default=8)
  parser.add_argument("--candidates", type=int, default=1, help="Best of N (needs --scorer).")
  parser.add_argument("--out", required=True)
  parser.add_argument("--chromium", default="/usr/bin/chromium")
  args = parser.parse_args(argv)
  requests = []
  with sync_api.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=ARGS)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(300_000)
    page.on("request", lambda r: requests.append(r.url))
    page.goto(args.url, wait_until="networkidle")
    page.locator("#prompt textarea").fill(args.prompt)
    for elem_id, value in (("num-samples", args.samples), ("candidates", args.candidates)):
      box = page.locator(f"#{elem_id} input[type=number]")
      box.fill(str(value))
      box.press("Enter")
    page.locator("#generate").click()
    page.wait_for_function("document.querySelectorAll('#generate-gallery img').length === "
                           f"{args.samples}")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=args.out, full_page=True)
    browser.close()
  remote = [u for u in requests if urllib.parse.urlsplit(u).hostname not in
            (None, "127.0.0.1", "localhost")]
  if remote:
    print(f"requests off this machine: {remote}", file=sys.stderr)
    return 1
  print(f"{args.out}: {len(requests)} requests, all to {args.url}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
