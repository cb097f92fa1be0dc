"""The ablation runner (`cli.py ablate`): the grid, run keys, the table, resumability, and the
GT-box gallery mode of the inference layer it reports beside every search mAP."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from pipeline.ablation import (Row, RunSpec, gap_closed, markdown_table, parse_arm, plan_runs,
                               run_key, summarise, term_variants)
from pipeline.config import load_config
from pipeline.config.student import StudentConfig

ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC_ALL = ROOT / "configs/synthetic/student-r18-all.yaml"
TERMS = ["lut", "feature", "relation", "detector", "jitter"]


# ------------------------------------------------------------------------------ the grid

def test_term_variants_are_the_papers_rows():
    names = [v.name for v in term_variants(TERMS)]
    assert names[0] == "none" and names[-1] == "all"
    assert names[1:6] == [f"only {t}" for t in TERMS]
    assert names[6:11] == [f"all but {t}" for t in TERMS]
    only = {v.name: v for v in term_variants(TERMS)}["only detector"]
    assert sorted(only.overrides) == sorted(f"distill.{t}.enabled=false"
                                            for t in TERMS if t != "detector")
    assert [v.name for v in term_variants(TERMS, ("none", "all"))] == ["none", "all"]
    # with two terms "all but one" would repeat "only": left out
    assert [v.name for v in term_variants(["lut", "feature"])] == \
        ["none", "only lut", "only feature", "all"]


def test_variants_really_switch_the_terms():
    runs = plan_runs(SYNTHETIC_ALL, term_variants(TERMS), ["r18"], [0])
    by = {r.variant: load_config(SYNTHETIC_ALL, StudentConfig, r.overrides) for r in runs}
    assert by["none"].distill.enabled_terms() == []
    assert by["all"].distill.enabled_terms() == TERMS
    assert by["only relation"].distill.enabled_terms() == ["relation"]
    assert by["all but lut"].distill.enabled_terms() == [t for t in TERMS if t != "lut"]
    assert all(c.train.seed == 0 and c.model.backbone == "resnet18" for c in by.values())


def test_parse_arm():
    arm = parse_arm("hot: distill.detector.temperature=2; train.lr=0.02")
    assert arm.name == "hot"
    assert arm.overrides == ("distill.detector.temperature=2", "train.lr=0.02")
    for bad in ("no-colon", ":train.lr=1", "x:train.lr"):
        with pytest.raises(ValueError):
            parse_arm(bad)


def test_run_key_ignores_what_cannot_change_a_run():
    cfg = lambda *ov: load_config(SYNTHETIC_ALL, StudentConfig, list(ov))
    base = run_key(cfg())
    assert run_key(cfg("run_dir=elsewhere", "train.device=cpu", "train.log_every=7",
                       "data.workers=0")) == base
    assert run_key(cfg("train.seed=1")) != base
    assert run_key(cfg("distill.detector.temperature=3")) != base
    assert run_key(cfg("distill.balance=uncertainty")) != base
    # a term that is off: its settings do not matter
    off = "distill.detector.enabled=false"
    assert run_key(cfg(off, "distill.detector.temperature=3")) == run_key(cfg(off))
    # no term at all: neither the cache nor the distillation settings matter
    none = [f"distill.{t}.enabled=false" for t in TERMS]
    assert run_key(cfg(*none, "cache=/x.h5", "distill.roi_share=0.5")) == run_key(cfg(*none))
    assert run_key(cfg(*none)) != run_key(cfg(*none, "train.lr=0.5"))


def test_plan_runs_refuses_bad_overrides_before_training():
    from pipeline.config import ConfigError
    with pytest.raises(ConfigError):
        plan_runs(SYNTHETIC_ALL, [parse_arm("x:train.no_such_key=1")], ["r18"], [0])
    with pytest.raises(ValueError, match="backbone"):
        plan_runs(SYNTHETIC_ALL, term_variants(TERMS, ("all",)), ["r101"], [0])


# ------------------------------------------------------------------------------ the table

def record(variant, seed, mAP, det_ap, gt_mAP=0.5, backbone="r18"):
    return {"variant": variant, "backbone": backbone, "seed": seed,
            "search": {"mAP": mAP, "top1": mAP, "det_ap": det_ap, "det_recall": 0.9},
            "gt_boxes": {"mAP": gt_mAP, "top1": gt_mAP}, "images_per_s": 4.0,
            "train_seconds": 100.0}


def test_summary_means_and_sample_std_and_gap_closed():
    recs = [record("none", 0, 0.10, 0.20), record("none", 1, 0.12, 0.22),
            record("all", 0, 0.20, 0.40), record("all", 1, 0.26, 0.44)]
    rows = summarise(recs, [("r18", "none"), ("r18", "all")])
    none, all_ = rows
    assert none.mean("mAP") == pytest.approx(11.0) and all_.mean("mAP") == pytest.approx(23.0)
    assert all_.std("mAP") == pytest.approx(np.std([20, 26], ddof=1))
    teacher = {"mAP": 31.0, "det_ap": 61.0}
    # (23 - 11) / (31 - 11) = 60%; det AP (42 - 21) / (61 - 21) = 52.5% -> "52%" or "53%"
    assert gap_closed(all_, none, teacher, "mAP") == "60%"
    assert gap_closed(all_, none, teacher, "det_ap") in ("52%", "53%")
    assert gap_closed(none, none, teacher, "mAP") == "-"
    text = markdown_table(rows, teacher)
    lines = text.strip().splitlines()
    assert lines[2].startswith("| teacher")
    assert "23.00 ± 4.24" in lines[4] and "| 2 |" in lines[4] and "60%" in lines[4]


def test_bench_worlds_scores_every_arm_against_the_same_floor(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_worlds
    result = {"teacher": {"mAP": 31.0, "det_ap": 61.0},   # ablate's teacher row is in percent
              "runs": [record("none", 0, 0.11, 0.21), record("all", 0, 0.21, 0.41),
                       record("uncertainty", 0, 0.26, 0.51), record("uncertainty", 1, 0.28, 0.51)]}
    arms = bench_worlds.arm_names(["uncertainty:distill.balance=uncertainty"])
    assert arms == ["uncertainty"]
    s = bench_worlds.scores(result, arms)
    assert s["uncertainty"]["mAP"] == pytest.approx(27.0)          # mean over student seeds
    assert s["gaps"]["all"]["mAP"] == pytest.approx(0.5)           # (21 - 11) / (31 - 11)
    assert s["gaps"]["uncertainty"]["mAP"] == pytest.approx(0.8)   # (27 - 11) / (31 - 11)
    assert s["gaps"]["uncertainty"]["det_ap"] == pytest.approx(0.75)
    world = bench_worlds.World("crowded-street", 0, "prw")
    assert "| 27.00 / 51.00 | 80% | 75% |" in bench_worlds.world_row(world, s, arms)
    assert "Worst world: crowded-street-seed0-prw (80%" in \
        bench_worlds.summary({world: s}, "uncertainty")


def test_a_single_seed_prints_no_std():
    rows = summarise([record("all", 0, 0.2, 0.4)], [("r18", "all")])
    assert "±" not in markdown_table(rows, None).splitlines()[-1]


# ------------------------------------------------------------------------------ GT-box gallery

class IdentitySearcher:
    """Embeds a box by the identity of the GT box it is (one-hot; unlabeled: the last axis);
    its detector finds nothing, so only the GT-box gallery mode can score well."""

    def __init__(self, data):
        self.pid_of = {self.box_key(b): int(p) for r in (*data.gallery, *data.train)
                       for b, p in zip(r.boxes, r.pids)}
        pids = sorted({p for p in self.pid_of.values() if p >= 0})
        self.axis = {p: i for i, p in enumerate(pids)}
        self.dim = self.embedding_dim = len(pids) + 1

    @staticmethod
    def box_key(box):
        return tuple(np.round(np.asarray(box, np.float64), 2))

    def detect(self, images):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                 "embeddings": torch.zeros(0, self.dim)} for _ in images]

    def embed_boxes(self, images, boxes):
        out = []
        for b in boxes:
            e = torch.zeros(len(b), self.dim)
            for k, box in enumerate(b.cpu().numpy()):
                e[k, self.axis.get(self.pid_of[self.box_key(box)], self.dim - 1)] = 1
            out.append(e)
        return out


def test_gt_gallery_mode_measures_reid_alone(synthetic_prw, tmp_path):
    from pipeline.data import read_dataset
    from pipeline.benchmark.evaluator import evaluate_search
    from pipeline.benchmark.results_file import read_results
    from pipeline.benchmark.run import run_searcher
    data = read_dataset("prw", synthetic_prw)
    searcher = IdentitySearcher(data)
    detected = run_searcher(searcher, data, tmp_path / "d.h5", device="cpu", progress=False)
    assert evaluate_search(data, read_results(detected, data), progress=False
                           ).metrics["mAP"] == 0.0
    gt = run_searcher(searcher, data, tmp_path / "g.h5", device="cpu", progress=False,
                      gallery_mode="gt")
    res = read_results(gt, data)
    assert len(res.gallery.scores) == sum(len(r.boxes) for r in data.gallery)
    assert (res.gallery.scores == 1).all()
    assert evaluate_search(data, res, progress=False).metrics["mAP"] == 1.0
    with pytest.raises(ValueError, match="gallery_mode"):
        run_searcher(searcher, data, tmp_path / "x.h5", device="cpu", gallery_mode="oracle")


def test_cli_gt_boxes_needs_a_checkpoint(synthetic_prw, tmp_path):
    from cli import cli
    result = CliRunner().invoke(cli, ["evaluate", "--dataset", "prw", "--root",
                                      str(synthetic_prw), "--results", str(tmp_path / "r.h5"),
                                      "--gt-boxes"])
    assert result.exit_code != 0 and "--gt-boxes needs a model" in result.output


# ------------------------------------------------------------------------------ end to end

def test_ablate_end_to_end_is_resumable(tmp_path):
    """Two variants, one seed, one epoch on six noise images: the table, the plot, one record
    per run; a second call trains nothing (and says so)."""
    from cli import cli
    from pipeline.data import read_dataset
    from test_train_student import write_config
    from tiny_cache import write_tiny_cache, write_tiny_prw
    root = write_tiny_prw(tmp_path / "prw6")
    data = read_dataset("prw", root)
    cache = write_tiny_cache(data.train, tmp_path / "teacher.h5")
    config = write_config(tmp_path, root, cache=cache, terms=("feature", "detector"),
                          batch_size=3)
    out = tmp_path / "abl"
    args = ["ablate", "--config", str(config), "--out", str(out), "--variants", "none,all",
            "--seeds", "0", "--set", "data.workers=0"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "running" in first.output and "done before" not in first.output
    for name in ("ablation.md", "ablation.png", "ablation.json"):
        assert (out / name).is_file(), name
    runs = json.loads((out / "ablation.json").read_text())["runs"]
    assert [r["variant"] for r in runs] == ["none", "all"]
    assert runs[0]["terms"] == [] and runs[1]["terms"] == ["feature", "detector"]
    for r in runs:
        assert 0 <= r["search"]["mAP"] <= 1 and 0 <= r["gt_boxes"]["mAP"] <= 1
        assert (out / "runs" / r["key"] / "record.json").is_file()
    table = (out / "ablation.md").read_text()
    assert "| r18 | none | 1 |" in table and "| r18 | all | 1 |" in table
    stamp = (out / "runs" / runs[1]["key"] / "checkpoint_last.pt").stat().st_mtime
    # the same runs again, the "all" one named otherwise: nothing trains, rows take this name
    again = [a if a != "none,all" else "none" for a in args] + ["--arm", "every term:"]
    second = CliRunner().invoke(cli, again)
    assert second.exit_code == 0, second.output
    assert second.output.count("done before") == 2 and "running" not in second.output
    assert (out / "runs" / runs[1]["key"] / "checkpoint_last.pt").stat().st_mtime == stamp
    assert "| r18 | every term | 1 |" in (out / "ablation.md").read_text()


def test_ablate_refuses_an_empty_grid_cleanly(tmp_path):
    from cli import cli
    result = CliRunner().invoke(cli, ["ablate", "--config", str(SYNTHETIC_ALL), "--out",
                                      str(tmp_path), "--variants", ""])
    assert result.exit_code != 0 and "nothing to run" in result.output
    assert "Traceback" not in result.output
