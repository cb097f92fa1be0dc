"""The calibrated "same person" score: the Platt fit, its file beside the model, results that
say "likely the same person" and draw the line, timelines of the likely ones; multi-query."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.footage.store import open_gallery
from pipeline.footage.search import QueryError, search_command
from pipeline.runtime.calibration import (Calibration, CalibrationError, calibration_path,
                                          fit_platt, identity_pairs, read_calibration,
                                          write_calibration)
from pipeline.runtime.types import ModelInfo
from tests.footage_helpers import fake_gallery
from tests.test_appearances import DIM, _walk_block


def test_platt_fit_recovers_a_known_logistic():
    g = np.random.default_rng(0)
    sims = g.uniform(-1, 1, 4000)
    same = g.uniform(size=4000) < 1 / (1 + np.exp(-(8 * sims - 2)))
    a, b = fit_platt(sims, same)
    # balanced weights move b by the log prior ratio; the slope is the logistic's
    assert a == pytest.approx(8, rel=0.15)
    prior = np.log(same.sum() / (~same).sum())
    assert b == pytest.approx(-2 - prior, abs=0.4)
    with pytest.raises(CalibrationError):
        fit_platt(sims, np.zeros(4000, bool))


def test_pairs_are_every_positive_and_only_different_negatives():
    ids = np.array([1, 1, 1, 2, 2])
    emb = np.eye(3, dtype=np.float32)[ids]      # one direction per identity
    sims, same = identity_pairs(emb, ids, negatives_per_positive=2)
    assert same.sum() == 4                       # 3 pairs of identity 1, 1 of identity 2
    assert (~same).sum() == 8 and np.all(sims[~same] == 0) and np.all(sims[same] == 1)


def _calibrated_gallery(tmp_path, calibrate=True, fingerprint="c" * 64):
    model = ModelInfo("student", str(tmp_path / "model.pt"), "c" * 64)
    blocks = [_walk_block("/v/cam1.mp4", "cam1", [(10, 8), (200, -8)]),
              _walk_block("/v/cam2.mp4", "cam2", [(30, 6)], seed=1)]
    gallery = open_gallery(fake_gallery(tmp_path / "g", blocks, dim=DIM, model=model))
    if calibrate:    # P = 0.5 at similarity 0.5
        write_calibration(model.name, Calibration(10.0, -5.0, 0.5, 10, 40, "now", "test",
                                                  fingerprint))
    return gallery


def test_calibration_is_read_only_for_the_weights_it_was_fit_on(tmp_path):
    model = ModelInfo("student", str(tmp_path / "model.pt"), "c" * 64)
    assert read_calibration(model)[0] is None and "not calibrated" in read_calibration(model)[1]
    write_calibration(model.name, Calibration(10.0, -5.0, 0.5, 1, 1, "now", "test", "d" * 64))
    assert calibration_path(model.name).name == "model.calibration.json"
    calibration, note = read_calibration(model)
    assert calibration is None and "other weights" in note
    write_calibration(model.name, Calibration(10.0, -5.0, 0.5, 1, 1, "now", "test", "c" * 64))
    calibration, _ = read_calibration(model)
    assert calibration.similarity_at_threshold == pytest.approx(0.5)
    assert calibration.probability([0.5])[0] == pytest.approx(0.5)


class _Grid(HTMLParser):
    """The result cards ("a1": appearance 1, "h3": hit 3) and the lines, in page order."""

    def __init__(self):
        super().__init__()
        self.items = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "threshold" in classes:
            self.items.append("line")
        elif tag == "a" and "hit" in classes:
            self.items.append(("a" if "appearance" in classes else "h") + attrs["data-rank"])


def test_results_say_likely_and_draw_the_line_where_it_falls(tmp_path):
    gallery = _calibrated_gallery(tmp_path)
    payload, page = search_command(gallery.directory, tmp_path / "out", hit=0)
    rows = payload["appearances"]
    assert [(a["camera"], a["likely"]) for a in rows] == [("cam2", True), ("cam1", False)]
    assert rows[0]["same_person"] > 0.9 > 0.1 > rows[1]["same_person"]
    assert payload["same_person"]["calibrated"] and payload["same_person"]["a"] == 10.0
    json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=pytest.fail)
    intervals = {r["camera"]: [m["rank"] for m in r["appearances"]] for r in payload["timeline"]}
    assert intervals == {"cam1": [], "cam2": [1]}        # the unlikely walk is not drawn
    grid = _Grid()
    grid.feed(page.read_text())
    assert grid.items[:3] == ["a1", "line", "a2"]
    likely_hits = sum(h["likely"] for h in payload["hits"])
    assert 0 < likely_hits < len(payload["hits"])
    assert [h["likely"] for h in payload["hits"]] == [True] * likely_hits + \
        [False] * (len(payload["hits"]) - likely_hits)
    assert grid.items[3:].index("line") == likely_hits


def test_an_uncalibrated_model_says_so_and_draws_no_line(tmp_path):
    gallery = _calibrated_gallery(tmp_path, calibrate=False)
    payload, page = search_command(gallery.directory, tmp_path / "out", hit=0)
    assert not payload["same_person"]["calibrated"]
    assert "not calibrated" in payload["same_person"]["note"]
    assert all(a["same_person"] is None and a["likely"] is None for a in payload["appearances"])
    assert sum(len(r["appearances"]) for r in payload["timeline"]) == 2   # all drawn
    grid = _Grid()
    grid.feed(page.read_text())
    assert "line" not in grid.items


def test_search_prints_the_line(tmp_path):
    gallery = _calibrated_gallery(tmp_path)
    out = CliRunner().invoke(cli, ["search", "--gallery", str(gallery.directory), "--hit", "0",
                                   "--out", str(tmp_path / "out")])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    cut = lines.index("---- not likely the same person below ----")
    assert "cam2" in lines[cut - 1] and "P 0.99" in lines[cut - 1] and "cam1" in lines[cut + 1]


def test_several_hits_are_one_query_leaving_out_each_one_own_appearance(tmp_path):
    gallery = _calibrated_gallery(tmp_path)
    cam2_hit = 12                                # the walker's first detection on cam2
    assert gallery.frame_camera[gallery.detection_frame[cam2_hit]] == "cam2"
    payload, page = search_command(gallery.directory, tmp_path / "out", hit=(0, cam2_hit))
    assert payload["query"]["kind"] == "multi"
    assert [p["hit"] for p in payload["query"]["parts"]] == [0, cam2_hit]
    assert [a["camera"] for a in payload["appearances"]] == ["cam1"]   # both own walks out
    assert "2 pictures of one person" in page.read_text()
    with pytest.raises(QueryError, match="leaves no camera"):
        search_command(gallery.directory, tmp_path / "o", hit=(0, cam2_hit), other_cameras=True)


def test_calibrate_writes_the_fit_beside_the_model(tmp_path, synthetic_prw,
                                                   random_student_checkpoint):
    model = tmp_path / "student.pt"
    model.write_bytes(random_student_checkpoint.read_bytes())
    out = CliRunner().invoke(cli, ["calibrate", "--model", str(model), "--dataset", "prw",
                                   "--root", str(synthetic_prw), "--no-measure", "--no-progress"])
    assert out.exit_code == 0, out.output
    saved = json.loads(calibration_path(model).read_text())
    assert saved["n_pos"] > 0 and saved["n_neg"] == 4 * saved["n_pos"]
    assert out.output.splitlines()[-1] == str(calibration_path(model))


def test_the_app_searches_from_several_hits_and_says_likely(tmp_path):
    from fastapi.testclient import TestClient
    from pipeline.footage.app import create_app
    gallery = _calibrated_gallery(tmp_path)
    client = TestClient(create_app(gallery.directory))
    r = client.get("/api/search", params=[("hit", 0), ("hit", 12)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["hit"] for p in body["query"]["parts"]] == [0, 12]
    assert [(a["camera"], a["likely"]) for a in body["appearances"]] == [("cam1", False)]
    assert client.get("/api/search", params=[("hit", 0), ("hit", 999)]).status_code == 404
