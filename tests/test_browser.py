"""The search app and the static results page in a real headless Chromium (Selenium), as a
person uses them, over footage indexed with a small trained two-step teacher: click a person,
get ranked results, and the top hit is that person again.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Without them
these tests fail with the install command, unless SKIP_BROWSER_TESTS=1 says to skip them.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from pipeline.data.synthetic.video import read_footage_truth
from pipeline.footage.scoring import best_views
from pipeline.footage.search import query_from_hit, run_query
from pipeline.footage.store import open_gallery

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--window-size=1400,900")
WAIT = 300         # seconds a page or the server may take on a loaded 2-core machine


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if os.environ.get("SKIP_BROWSER_TESTS") == "1":
        pytest.skip("SKIP_BROWSER_TESTS=1")
    missing = [p for p in (CHROMIUM, DRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install -y chromium "
                    "chromium-driver (or SKIP_BROWSER_TESTS=1 to skip the browser tests)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=WAIT):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, selector)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(teacher_gallery):
    """`cli.py serve` in its own process, as a user starts it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", "--gallery",
                             str(teacher_gallery), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + WAIT
    while True:
        try:
            if httpx.get(f"{url}/api/gallery", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"serve did not come up: {proc.stdout.read()}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def walker_queries(gallery_dir, footage_root):
    """(detection id, frame id, walker pid) of the detection that frames each walker best: the
    people a person would click on. Those whose search (the library's, not the page's) puts
    the same walker on top come first, the best framed first within each group: what the page
    shows is then checked against what the small teacher can do, on any machine's arithmetic."""
    g = open_gallery(gallery_dir)
    truth = read_footage_truth(footage_root)
    views = sorted(best_views(g, truth).items(), key=lambda v: -v[1][1])
    queries = [(det, int(g.detection_frame[det]), pid) for pid, (det, _) in views]

    def found_again(query) -> bool:
        top = run_query(g, query_from_hit(g, query[0]), top=1)
        return bool(top) and truth.identity(top[0].source, top[0].frame, top[0].box) == query[2]
    return sorted(queries, key=lambda q: not found_again(q)), truth


def identity_of(truth, element):
    box = [float(v) for v in element.get_attribute("data-box").split(",")]
    return truth.identity(element.get_attribute("data-source"),
                          int(element.get_attribute("data-frame")), box)


def images_loaded(driver, selector="img") -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".every(i => i.complete && i.naturalWidth > 0);", selector)


def test_click_a_person_and_find_them_again(browser, app_url, teacher_gallery, teacher_footage,
                                            tmp_path):
    from selenium.webdriver.support.ui import Select
    queries, truth = walker_queries(teacher_gallery, teacher_footage)
    assert queries, "the teacher detected none of the walkers"
    browser.get(app_url)
    wait_for(browser, lambda d: css(d, "#frames li"))
    g = open_gallery(teacher_gallery)
    for det, frame, pid in queries:          # the most confident walker a click can reach
        Select(css(browser, "#camera")[0]).select_by_value(g.frame_camera[frame])
        wait_for(browser, lambda d: css(d, f'#frames li[data-frame-id="{frame}"]'))
        css(browser, f'#frames li[data-frame-id="{frame}"]')[0].click()
        person = wait_for(browser, lambda d: css(d, f'.person[data-detection-id="{det}"]'))[0]
        on_top = browser.execute_script(
            "const r = arguments[0].getBoundingClientRect();"
            "return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === "
            "arguments[0];", person)
        if on_top:
            break
    person.click()
    wait_for(browser, lambda d: css(d, "#hits .hit") and images_loaded(d, "#hits img"))
    hits = css(browser, "#hits .hit")
    assert "matches" in css(browser, "#status")[0].text
    assert [int(h.get_attribute("data-rank")) for h in hits] == list(range(1, len(hits) + 1))
    sims = [float(h.get_attribute("data-similarity")) for h in hits]
    assert sims == sorted(sims, reverse=True)
    assert identity_of(truth, hits[0]) == pid, "the top hit is someone else"
    assert images_loaded(browser, "#query-crop") and css(browser, "#timeline rect.interval")
    shot = tmp_path / "app-results.png"
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 800
    # open the top hit's frame: its person is marked, and can be searched from again
    hits[0].click()
    wait_for(browser, lambda d: css(d, f'.person.picked[data-detection-id="{hits[0].get_attribute("data-id")}"]'))
    assert css(browser, "#frame-image")[0].get_attribute("data-frame-id") == \
        hits[0].get_attribute("data-frame-id")
    # an appearance shows its frames and searches again from its best detection
    appearance = css(browser, "#appearances .appearance")[0]
    appearance.click()
    wait_for(browser, lambda d: css(d, "#track .strip-frame") and images_loaded(d, "#track img"))
    best = appearance.get_attribute("data-hit")
    css(browser, "#search-track")[0].click()
    wait_for(browser, lambda d: css(d, "#query-text")[0].text.startswith(f"person {best}:"))


def test_drop_in_a_picture(browser, app_url, teacher_gallery, teacher_footage, tmp_path):
    queries, truth = walker_queries(teacher_gallery, teacher_footage)
    det, frame, pid = queries[0]
    g = open_gallery(teacher_gallery)
    from pipeline.footage.pictures import detection_crop
    picture = tmp_path / "person.jpg"
    picture.write_bytes(detection_crop(g, det))
    browser.get(app_url)
    wait_for(browser, lambda d: css(d, "#frames li"))
    css(browser, "#upload")[0].send_keys(str(picture))
    wait_for(browser, lambda d: css(d, "#hits .hit") and images_loaded(d, "#hits img"))
    assert css(browser, "#query-text")[0].text.startswith("your picture")
    assert identity_of(truth, css(browser, "#hits .hit")[0]) == pid
    # a broken picture: the page says why, nothing else changes
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    css(browser, "#upload")[0].send_keys(str(tmp_path / "broken.jpg"))
    wait_for(browser, lambda d: "not a picture" in css(d, "#status")[0].text)
    assert css(browser, "#status")[0].get_attribute("class") == "error"


def test_results_page_opens_from_disk(browser, teacher_gallery, teacher_footage, tmp_path):
    from selenium.webdriver.common.by import By
    queries, truth = walker_queries(teacher_gallery, teacher_footage)
    det, frame, pid = queries[0]
    out = tmp_path / "results"
    r = CliRunner().invoke(cli, ["search", "--gallery", str(teacher_gallery), "--hit",
                                 str(det), "--top", "12", "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = Path(r.output.strip().splitlines()[-1])
    assert page == out / "results.html"
    browser.get(page.resolve().as_uri())
    wait_for(browser, lambda d: css(d, "a.hit") and images_loaded(d))
    cards = css(browser, "a.hit:not(.appearance)")
    assert len(cards) == 12 and identity_of(truth, cards[0]) == pid
    # everything is inside the file: no address to fetch from anywhere
    urls = browser.execute_script(
        "return [...document.querySelectorAll('[src],[href]')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'));")
    assert all(u.startswith(("data:image/", "#")) for u in urls), urls
    rows = css(browser, ".timeline svg")
    assert sorted(s.get_attribute("data-camera") for s in rows) == open_gallery(teacher_gallery).cameras
    assert css(browser, ".timeline rect.interval") and css(browser, ".timeline line.query-mark")
    # an appearance opens a strip of its frames
    track = browser.find_element(By.ID, "track-1")
    assert not track.is_displayed()
    css(browser, "a.appearance")[0].click()
    wait_for(browser, lambda d: track.is_displayed())
    assert track.find_elements(By.CSS_SELECTOR, "img.strip") and "--hit" in track.text
    track.find_element(By.LINK_TEXT, "close").click()
    wait_for(browser, lambda d: not track.is_displayed())
    # a hit opens its whole frame with the box drawn; "close" hides it again
    overlay = browser.find_element(By.ID, "frame-1")
    assert not overlay.is_displayed()
    cards[0].click()
    wait_for(browser, lambda d: overlay.is_displayed())
    frame_img = overlay.find_element(By.TAG_NAME, "img")
    width = browser.execute_script("return arguments[0].naturalWidth;", frame_img)
    assert width == open_gallery(teacher_gallery).frame_width[0]   # the whole frame
    browser.save_screenshot(str(tmp_path / "results-frame.png"))
    overlay.find_element(By.LINK_TEXT, "close").click()
    wait_for(browser, lambda d: not overlay.is_displayed())
    browser.save_screenshot(str(tmp_path / "results-page.png"))


def test_the_line_falls_between_likely_and_not_and_two_picks_search_again(
        browser, app_url, teacher_gallery, teacher_footage):
    from pipeline.runtime.calibration import Calibration, write_calibration
    queries, _ = walker_queries(teacher_gallery, teacher_footage)
    det = queries[0][0]
    g = open_gallery(teacher_gallery)
    rows = httpx.get(f"{app_url}/api/search", params={"hit": det}, timeout=WAIT).json()
    sims = [a["similarity"] for a in rows["appearances"]]
    assert len(sims) >= 3 and sims[1] > sims[2], sims
    middle = (sims[1] + sims[2]) / 2          # a calibration that puts the line after two
    path = write_calibration(g.model.name, Calibration(
        50.0, -50.0 * middle, 0.5, 1, 1, "now", "test", g.model.fingerprint))
    try:
        browser.get(app_url)
        wait_for(browser, lambda d: css(d, "#frames li"))
        browser.execute_script("searchHit(arguments[0]);", det)
        wait_for(browser, lambda d: css(d, "#appearances li.threshold"))
        items = css(browser, "#appearances > li")
        classes = [i.get_attribute("class") for i in items]
        assert classes.index("threshold") == 2 and classes.count("threshold") == 1
        assert "likely the same person" in css(browser, "#calibration")[0].text
        drawn = {int(r.get_attribute("data-rank")) for r in css(browser, "#timeline rect.interval")}
        assert drawn == {1, 2}                 # only the likely appearances are drawn
        # tick two appearances, search again from both: one query that names both
        cards = css(browser, "#appearances .appearance")[:2]
        picks = [c.get_attribute("data-hit") for c in cards]
        for card in cards:
            card.find_element("css selector", "input.pick").click()
        button = css(browser, "#search-picked")[0]
        assert button.is_enabled() and "(2)" in button.text
        button.click()
        wait_for(browser, lambda d: css(d, "#query-text")[0].text.startswith("2 pictures"))
        text = css(browser, "#query-text")[0].text
        assert all(f"person {p}:" in text for p in picks)
        wait_for(browser, lambda d: {a.get_attribute("data-hit") for a in
                                     css(d, "#appearances .appearance")}.isdisjoint(picks))
    finally:
        path.unlink()
