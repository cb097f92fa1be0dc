"""`cli.py ablate`: a grid of student runs from one teacher cache, the way papers print ablations.

The grid crosses variants x backbones x seeds. Variants switch the distillation terms of a base
student config on and off (no distillation; each term alone; all but one; all) and may add
named arms (any ``--set`` overrides on top of the base config). Every run is trained with
``cli.py train-student`` and scored twice with ``cli.py evaluate``: the search protocol (search
mAP, top-1, detection AP / recall) and the ground-truth boxes as the gallery (mAP of Re-ID
alone), so a table shows which half of the student lags.

Runs are keyed by their resolved config (sections of terms that are off, and everything that
does not change the result, left out), so a finished run is never redone, also across grids
and output folders that share ``--runs-dir``; an interrupted one resumes from its last epoch.
The table (markdown, mean ± std over seeds), a plot with error bars and every run's record
are written atomically after each run.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import load_config, to_dict
from pipeline.config.distill import DistillConfig
from pipeline.config.student import StudentConfig
from pipeline.cores import shared_env
from pipeline.errors import UserError
from pipeline.files import atomic_path, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, str(ROOT / "cli.py")]

VARIANT_KINDS = ("none", "alone", "all-but-one", "all")
BACKBONES = {"r18": "resnet18", "r34": "resnet34", "r50": "resnet50"}
#: config keys that do not change what a run learns: left out of its key
UNKEYED = ("run_dir", "train.device", "train.log_every", "data.workers")
METRICS = ("mAP", "top1", "det_ap", "det_recall")       # from the search protocol
GT_METRICS = ("mAP", "top1")                             # with GT boxes as the gallery
RECORD = "record.json"


class AblationError(UserError, RuntimeError):
    """A run of the grid failed; the message names it and says where its log is."""


@dataclass(frozen=True)
class Variant:
    """One row family of the table: a name and the overrides that make it from the base."""
    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    variant: str
    backbone: str
    seed: int
    overrides: tuple[str, ...]   # everything on top of the base config except run_dir
    key: str

    @property
    def label(self) -> str:
        return f"{self.backbone} {self.variant} seed {self.seed}"


# ------------------------------------------------------------------------------ the grid

def term_variants(terms: list[str], kinds=VARIANT_KINDS) -> list[Variant]:
    """Variants over ``terms`` (the terms the base config enables), in table order."""
    off = lambda names: tuple(f"distill.{t}.enabled=false" for t in names)
    out = []
    if "none" in kinds:
        out.append(Variant("none", off(terms)))
    if "alone" in kinds:
        out += [Variant(f"only {t}", off([u for u in terms if u != t])) for t in terms]
    if "all-but-one" in kinds and len(terms) > 2:
        out += [Variant(f"all but {t}", off([t])) for t in terms]
    if "all" in kinds:
        out.append(Variant("all"))
    return out


def parse_arm(text: str) -> Variant:
    """'NAME:KEY=VALUE;KEY=VALUE' -> Variant (a named arm on top of the base config)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"arm {text!r}: expected NAME:KEY=VALUE[;KEY=VALUE...]")
    overrides = tuple(o.strip() for o in rest.split(";") if o.strip())
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"arm {name!r}: overrides must be KEY=VALUE, got {bad}")
    return Variant(name.strip(), overrides)


def run_key(cfg: StudentConfig) -> str:
    """Hash of what a run learns from: the resolved config without UNKEYED keys, without the
    sections of distillation terms that are off, and without cache and distillation settings
    at all when no term is on (then every base config gives the same undistilled run)."""
    tree = to_dict(cfg)
    for dotted in UNKEYED:
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    terms = cfg.distill.enabled_terms()
    tree["distill"] = {k: v for k, v in tree["distill"].items()
                       if not isinstance(v, dict) or k in terms} if terms else {}
    if tree["distill"].get("balance") == DistillConfig.balance:
        del tree["distill"]["balance"]  # runs from before the balance existed keep their keys
    if not terms:
        tree.pop("cache", None)
        tree.pop("teacher_config", None)
    text = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_runs(config: str | Path, variants: list[Variant], backbones: list[str],
              seeds: list[int], common: tuple[str, ...] = ()) -> list[RunSpec]:
    """Every (variant, backbone, seed) with its overrides and key; configs are resolved now,
    so a bad override fails before anything trains."""
    runs = []
    for backbone in backbones:
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r}; expected one of {sorted(BACKBONES)}")
        for variant in variants:
            for seed in seeds:
                ov = (*common, f"model.backbone={BACKBONES[backbone]}", *variant.overrides,
                      f"train.seed={seed}")
                cfg = load_config(config, StudentConfig, ov)
                runs.append(RunSpec(variant.name, backbone, seed, ov, run_key(cfg)))
    return runs


# ------------------------------------------------------------------------------ one run

def read_record(run_dir: Path) -> dict | None:
    path = run_dir / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _call(args: list[str], log: Path, env: dict) -> None:
    with open(log, "a") as f:
        f.write(f"$ python cli.py {' '.join(args)}\n")
        f.flush()
        rc = subprocess.call(CLI + args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise AblationError(f"`cli.py {args[0]}` failed (exit {rc}); see {log}")


def evaluate_args(source: str, dataset: str, root: str, json_path: Path, model: str,
                  gt_boxes: bool, device: str) -> list[str]:
    """``source``: a student checkpoint (model "student") or a teacher YAML ("teacher")."""
    flag = "--checkpoint" if model == "student" else "--teacher-config"
    args = ["evaluate", "--dataset", dataset, "--root", root, flag, source,
            "--json", str(json_path), "--out-dir", str(json_path.parent), "--device", device]
    return args + (["--gt-boxes"] if gt_boxes else [])


def evaluate_both(checkpoint: str, dataset: str, root: str, out_dir: Path, model: str,
                  device: str, log: Path, env: dict) -> dict:
    """Search-protocol and GT-box metrics of one model, each computed once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, gt in (("metrics.json", False), ("metrics_gt.json", True)):
        path = out_dir / name
        if not path.is_file():
            _call(evaluate_args(checkpoint, dataset, root, path, model, gt, device), log, env)
        found[name] = json.loads(path.read_text())
    return {"search": {k: found["metrics.json"][k] for k in METRICS},
            "gt_boxes": {k: found["metrics_gt.json"][k] for k in GT_METRICS}}


def execute(run: RunSpec, config: str, runs_dir: Path, device: str, env: dict) -> dict:
    """Train (or resume) and evaluate one run; its record, also written to its folder."""
    run_dir = runs_dir / run.key
    done = read_record(run_dir)
    if done is not None:
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.txt"
    cfg = load_config(config, StudentConfig, run.overrides)
    if not (run_dir / "train_stats.json").is_file():
        args = ["train-student", "--config", str(config), "--no-progress", "--device", device,
                *[a for o in run.overrides for a in ("--set", o)], "--set", f"run_dir={run_dir}"]
        resume = (run_dir / "checkpoint_last.pt").is_file()
        start = time.time()
        _call(args + (["--resume"] if resume else []), log, env)
        (run_dir / "wall_seconds.txt").write_text(f"{time.time() - start:.1f}\n")
    stats = json.loads((run_dir / "train_stats.json").read_text())
    metrics = evaluate_both(str(run_dir / "checkpoint_last.pt"), cfg.data.dataset,
                            str(cfg.data.root), run_dir / "eval", "student", device, log, env)
    record = {"variant": run.variant, "backbone": run.backbone, "seed": run.seed,
              "key": run.key, "overrides": list(run.overrides), **metrics,
              "images_per_s": stats.get("images_per_s"), "train_seconds": stats.get("seconds"),
              "epochs": cfg.train.epochs, "terms": cfg.distill.enabled_terms()}
    write_json_atomic(run_dir / RECORD, record, indent=2)
    return record


# ------------------------------------------------------------------------------ the table

@dataclass
class Row:
    variant: str
    backbone: str
    values: dict[str, list[float]] = field(default_factory=dict)   # column -> one per seed

    def mean(self, col: str) -> float:
        v = [x for x in self.values.get(col, []) if x is not None]
        return float(np.mean(v)) if v else float("nan")

    def std(self, col: str) -> float:
        v = [x for x in self.values.get(col, []) if x is not None]
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


COLUMNS = {  # column -> (header, getter from a record); metrics in percent
    "mAP": ("search mAP", lambda r: 100 * r["search"]["mAP"]),
    "top1": ("top-1", lambda r: 100 * r["search"]["top1"]),
    "gt_mAP": ("mAP, GT boxes", lambda r: 100 * r["gt_boxes"]["mAP"]),
    "det_ap": ("det AP", lambda r: 100 * r["search"]["det_ap"]),
    "det_recall": ("det recall", lambda r: 100 * r["search"]["det_recall"]),
    "images_per_s": ("train img/s", lambda r: r["images_per_s"]),
    "train_seconds": ("train s", lambda r: r["train_seconds"]),
}


def summarise(records: list[dict], order: list[tuple[str, str]]) -> list[Row]:
    """One row per (backbone, variant) in ``order``, the seeds' values per column."""
    rows = {k: Row(k[1], k[0]) for k in order}
    for r in records:
        row = rows.get((r["backbone"], r["variant"]))
        if row is None:
            continue
        for col, (_, get) in COLUMNS.items():
            row.values.setdefault(col, []).append(get(r))
        row.values.setdefault("seeds", []).append(r["seed"])
    return [rows[k] for k in order if rows[k].values]


def _cell(row: Row, col: str, digits: int = 2) -> str:
    m, s = row.mean(col), row.std(col)
    if np.isnan(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(row.values[col]) > 1 else f"{m:.{digits}f}"


def gap_closed(row: Row, floor: Row | None, teacher: dict | None, col: str) -> str:
    """Share of the teacher - floor gap this row closes (percent), '-' without both ends."""
    if floor is None or teacher is None or col not in teacher or floor is row:
        return "-"
    gap = teacher[col] - floor.mean(col)
    return f"{100 * (row.mean(col) - floor.mean(col)) / gap:.0f}%" if gap > 0 else "-"


def markdown_table(rows: list[Row], teacher: dict | None) -> str:
    """Mean ± std over seeds; gap columns against the same backbone's 'none' row."""
    cols = ["mAP", "gt_mAP", "det_ap", "det_recall", "top1", "images_per_s", "train_seconds"]
    head = ["backbone", "variant", "seeds", *[COLUMNS[c][0] for c in cols],
            "mAP gap closed", "det AP gap closed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if teacher:
        vals = [f"{teacher[c]:.2f}" if c in teacher else "-" for c in cols]
        lines.append("| teacher | two-step | - | " + " | ".join(vals) + " | 100% | 100% |")
    floors = {r.backbone: r for r in rows if r.variant == "none"}
    for r in rows:
        floor = floors.get(r.backbone)
        cells = [r.backbone, r.variant, str(len(r.values["seeds"])),
                 *[_cell(r, c, 1 if c == "train_seconds" else 2) for c in cols],
                 gap_closed(r, floor, teacher, "mAP"), gap_closed(r, floor, teacher, "det_ap")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], teacher: dict | None, path: Path) -> None:
    """Three panels (search mAP, mAP with GT boxes, det AP), one bar per row, std error bars,
    the teacher as a dashed line."""
    from matplotlib.figure import Figure   # here: matplotlib costs every command 1 s to import
    panels = ["mAP", "gt_mAP", "det_ap"]
    fig = Figure(figsize=(13, 0.45 * len(rows) + 1.6))
    axes = fig.subplots(1, 3, sharey=True)
    y = np.arange(len(rows))[::-1]
    colors = {b: c for b, c in zip(sorted({r.backbone for r in rows}), ["C0", "C1", "C2"])}
    for ax, col in zip(axes, panels):
        ax.barh(y, [r.mean(col) for r in rows], xerr=[r.std(col) for r in rows],
                color=[colors[r.backbone] for r in rows], capsize=3)
        if teacher and col in teacher:
            ax.axvline(teacher[col], color="k", ls="--", lw=1)
            ax.text(teacher[col], 1.0, " teacher", transform=ax.get_xaxis_transform(),
                    fontsize=8, va="bottom", ha="center")
        ax.set_title(COLUMNS[col][0] + " (%)", pad=14)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [f"{r.backbone} {r.variant} (n={len(r.values['seeds'])})"
                           for r in rows], fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def write_outputs(out_dir: Path, records: list[dict], order, teacher: dict | None,
                  command: str) -> Path:
    rows = summarise(records, order)
    table = markdown_table(rows, teacher)
    text = (f"Command: `{command}`\n\nPercent; mean ± std over seeds (sample std); gap "
            "closed = (row - none) / (teacher - none) for the same backbone.\n\n" + table)
    write_text_atomic(out_dir / "ablation.md", text)
    write_json_atomic(out_dir / "ablation.json", {"command": command, "teacher": teacher,
                                                  "runs": records}, indent=2)
    if rows:
        plot(rows, teacher, out_dir / "ablation.png")
    return out_dir / "ablation.md"


# ------------------------------------------------------------------------------ all of it

def teacher_metrics(teacher_config: str, dataset: str, root: str, out_dir: Path, device: str,
                    env: dict) -> dict:
    m = evaluate_both(teacher_config, dataset, root, out_dir, "teacher", device,
                      out_dir / "log.txt", env)
    return {"mAP": 100 * m["search"]["mAP"], "top1": 100 * m["search"]["top1"],
            "det_ap": 100 * m["search"]["det_ap"], "det_recall": 100 * m["search"]["det_recall"],
            "gt_mAP": 100 * m["gt_boxes"]["mAP"]}


def run_ablation(config: str, out_dir: Path, runs: list[RunSpec], *, runs_dir: Path | None,
                 device: str = "cpu", jobs: int = 1, teacher_config: str | None = None,
                 command: str = "", echo=print) -> tuple[Path, list[str]]:
    """Run (or reuse) every run, rewriting the outputs after each; -> (table path, failures)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs_dir = runs_dir or out_dir / "runs"
    env = shared_env(jobs)
    cfg = load_config(config, StudentConfig, runs[0].overrides if runs else ())
    teacher = None
    if teacher_config:
        echo(f"teacher: evaluating {teacher_config} (once)")
        teacher = teacher_metrics(teacher_config, cfg.data.dataset, str(cfg.data.root),
                                  out_dir / "teacher", device, env)
    order = list(dict.fromkeys((r.backbone, r.variant) for r in runs))
    records, failures = [], []

    def one(i_run):
        i, run = i_run
        had = read_record(runs_dir / run.key) is not None
        echo(f"[{i + 1}/{len(runs)}] {run.label}: " + ("done before" if had else "running"))
        return execute(run, config, runs_dir, device, env)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [(run, pool.submit(one, (i, run))) for i, run in enumerate(runs)]
        for run, fut in futures:
            try:  # a run reused from another grid is named as in this one
                records.append({**fut.result(), "variant": run.variant,
                                "backbone": run.backbone, "seed": run.seed})
            except AblationError as e:
                failures.append(f"{run.label}: {e}")
                echo(f"FAILED {run.label}: {e}")
            write_outputs(out_dir, records, order, teacher, command)
    return write_outputs(out_dir, records, order, teacher, command), failures
