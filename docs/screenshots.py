#!/usr/bin/env python
"""Redraw the README's two pictures from what `make demo` left behind, in the same headless
Chromium the browser tests use: the results page of the demo's footage search
(docs/footage-search.png) and the search app after a click on the same walker
(docs/search-app.png).

    .venv/bin/python docs/screenshots.py      # or: make screenshots (after make demo)
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", "--window-size=1100,900")
WAIT = 120


def chromium() -> webdriver.Chrome:
    for path in (CHROMIUM, DRIVER):
        if not Path(path).exists():
            sys.exit(f"{path} not found: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(DRIVER))


def results_page(driver, page: Path, out: Path) -> None:
    driver.get(page.resolve().as_uri())
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "img"))
    save(driver, out)


def save(driver, out: Path) -> None:
    if not driver.save_screenshot(str(out)):    # Selenium answers False, not an error
        sys.exit(f"could not write {out}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(gallery: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--gallery",
                             str(gallery), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + WAIT
    while time.time() < deadline:
        try:
            if httpx.get(url + "/api/gallery", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    sys.exit(f"`cli.py serve --gallery {gallery}` did not answer within {WAIT} s")


def app_page(driver, gallery: Path, query: dict, out: Path) -> None:
    """The app as after a click on the demo's query detection: its frame and its search."""
    proc, url = serve(gallery)
    try:
        driver.get(url)
        WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#frames li"))
        Select(driver.find_element(By.ID, "camera")).select_by_value(query["camera"])
        # what a click on the person in the frame does (app.js)
        driver.execute_script("showFrame(arguments[0], arguments[1]); searchHit(arguments[1]);",
                              query["frame_id"], query["hit"])
        WebDriverWait(driver, WAIT).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#appearances .appearance img"))
        time.sleep(1.0)   # let the crops finish loading
        save(driver, out)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "work/runs/footage-search")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    page = args.results / "results.html"
    if not page.exists():
        sys.exit(f"{page} not found: run `make demo` first")
    results = json.loads((args.results / "results.json").read_text())
    if results["query"].get("hit") is None:
        sys.exit(f"{page} is not a search from a gallery detection; run `make demo` again")
    args.out.mkdir(parents=True, exist_ok=True)
    driver = chromium()
    try:
        results_page(driver, page, args.out / "footage-search.png")
        app_page(driver, ROOT / results["gallery"], results["query"], args.out / "search-app.png")
    finally:
        driver.quit()
    print(f"wrote {args.out / 'footage-search.png'} and {args.out / 'search-app.png'}")


if __name__ == "__main__":
    main()
