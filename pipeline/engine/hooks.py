"""Everything around the training step, as hooks (detectron2 style).

A hook sees the trainer at fixed points: ``before_train``, ``before_epoch``, ``before_step``,
``after_step``, ``on_log(rows)`` (every logged step: a dict with "step", "epoch", "lr",
"loss" (the total) and one float per named loss), ``after_epoch`` and ``after_train``
(always called, also when training failed; ``trainer.error`` then holds the exception).
Hooks that write files do so only on the main process (``trainer.is_main``).
"""
from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm


class HookBase:
    trainer = None  # set by the Trainer

    def before_train(self): ...
    def after_train(self): ...
    def before_epoch(self): ...
    def after_epoch(self): ...
    def before_step(self): ...
    def after_step(self): ...
    def on_log(self, rows: list[dict]): ...


class LRScheduler(HookBase):
    """Steps the (per-iteration) scheduler after every optimizer step."""

    def after_step(self):
        if self.trainer.scheduler is not None:
            self.trainer.scheduler.step()


class Checkpointer(HookBase):
    """Saves ``checkpoint_last.pt`` after every epoch, plus ``checkpoint_epoch{N:03d}.pt``
    (a hard link of the same file where the file system allows, so it costs no disk)."""

    def __init__(self, keep_every_epoch: bool = True):
        self.keep_every_epoch = keep_every_epoch

    def after_epoch(self):
        t = self.trainer
        if t.is_main:
            t.save_checkpoint(keep_copy=self.keep_every_epoch)
        t.barrier()


class CSVLogger(HookBase):
    """``losses.csv``: one row per step, every loss plus lr. On resume, rows written after the
    checkpoint's step (an interrupted epoch) are dropped so the log matches the weights."""

    FIXED = ["step", "epoch", "lr", "loss"]

    def __init__(self, filename: str = "losses.csv"):
        self.filename = filename
        self.columns: list[str] | None = None

    @property
    def path(self) -> Path:
        return Path(self.trainer.run_dir) / self.filename

    def _read(self) -> tuple[list[str], list[dict]]:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _rewrite(self, columns: list[str], rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)

    def before_train(self):
        if not self.trainer.is_main:
            return
        if self.trainer.resumed and self.path.exists():
            columns, rows = self._read()
            rows = [r for r in rows if int(r["step"]) <= self.trainer.global_step]
            self.columns = columns
            self._rewrite(columns, rows)
        else:
            self.columns = None
            if self.path.exists():
                self.path.unlink()

    def on_log(self, rows):
        if not self.trainer.is_main or not rows:
            return
        new = [k for r in rows for k in r if self.columns is None or k not in self.columns]
        if self.columns is None or new:
            old_rows = self._read()[1] if self.path.exists() else []
            cols = list(self.columns or self.FIXED)
            for k in new:
                if k not in cols:
                    cols.append(k)
            self.columns = cols
            self._rewrite(cols, old_rows)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, restval="")
            for r in rows:
                writer.writerow({k: _fmt(v) for k, v in r.items()})


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def read_loss_log(path: str | Path) -> tuple[list[str], dict[str, list[float]]]:
    """Columns and values of a ``losses.csv`` (empty cells become NaN)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = list(reader.fieldnames or [])
        data = {c: [] for c in cols}
        for r in reader:
            for c in cols:
                v = r.get(c, "")
                data[c].append(float(v) if v not in ("", None) else math.nan)
    return cols, data


def plot_losses(csv_path: str | Path, png_path: str | Path) -> Path:
    """Loss curves (one panel per loss, raw and smoothed) plus the lr, from ``losses.csv``."""
    cols, data = read_loss_log(csv_path)
    names = [c for c in cols if c not in ("step", "epoch", "lr")]
    panels = names + ["lr"]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows))  # no pyplot: no global figure state
    axes = fig.subplots(nrows, ncols, squeeze=False)
    steps = np.asarray(data["step"])
    for ax, name in zip(axes.flat, panels):
        y = np.asarray(data[name])
        smooth_it = len(y) > 20 and name != "lr"
        ax.plot(steps, y, lw=0.8 if smooth_it else 1.2, alpha=0.45 if smooth_it else 1.0, color="C0")
        if smooth_it:
            w = max(5, len(y) // 25)
            ok = np.isfinite(y)
            if ok.sum() > w:
                smooth = np.convolve(y[ok], np.ones(w) / w, mode="valid")
                ax.plot(steps[ok][w - 1:], smooth, lw=1.6, color="C1", label=f"mean of {w}")
                ax.legend(fontsize=7)
        ax.set_title("loss (total)" if name == "loss" else name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    return png_path


class LossPlot(HookBase):
    """``losses.png`` from ``losses.csv`` after each epoch and at the end (also after a failure)."""

    def __init__(self, csv_name: str = "losses.csv", png_name: str = "losses.png"):
        self.csv_name, self.png_name = csv_name, png_name

    def _plot(self):
        run_dir = Path(self.trainer.run_dir)
        if self.trainer.is_main and (run_dir / self.csv_name).exists():
            try:
                plot_losses(run_dir / self.csv_name, run_dir / self.png_name)
            except Exception as e:  # noqa: BLE001 - a plot must never kill a run
                print(f"warning: could not plot losses: {e}", file=sys.stderr)

    after_epoch = _plot
    after_train = _plot


class TensorBoard(HookBase):
    """Scalars to ``run_dir/tensorboard`` when the tensorboard package is installed."""

    def __init__(self):
        self.writer = None

    @staticmethod
    def available() -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  optional package
            return True
        except Exception:  # noqa: BLE001 - ImportError or a broken install
            return False

    def before_train(self):
        if self.trainer.is_main and self.available():
            from torch.utils.tensorboard import SummaryWriter  # optional package
            self.writer = SummaryWriter(str(Path(self.trainer.run_dir) / "tensorboard"))

    def on_log(self, rows):
        if self.writer is None:
            return
        for r in rows:
            for k, v in r.items():
                if k not in ("step", "epoch") and isinstance(v, float):
                    self.writer.add_scalar(f"train/{k}", v, r["step"])

    def after_train(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(HookBase):
    """A tqdm bar per epoch with loss, lr and images/s (main process only)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def before_epoch(self):
        t = self.trainer
        if not (self.enabled and t.is_main):
            return
        self.bar = tqdm(total=t.iters_per_epoch, desc=f"epoch {t.epoch + 1}/{t.max_epochs}",
                        unit="it", dynamic_ncols=True, file=sys.stderr, leave=True)
        self._t0, self._n0 = time.perf_counter(), t.images_seen

    def after_step(self):
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, rows):
        if self.bar is None or not rows:
            return
        t = self.trainer
        dt = time.perf_counter() - self._t0
        speed = (t.images_seen - self._n0) / dt if dt > 0 else 0.0
        r = rows[-1]
        self.bar.set_postfix_str(f"loss={r['loss']:.4g} lr={r['lr']:.3g} img/s={speed:.2f}",
                                 refresh=False)

    def after_epoch(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    after_train = after_epoch


class TrainStats(HookBase):
    """``train_stats.json``: images/s of the training steps (data loading included, checkpoint
    and evaluation hooks excluded), steps, images, seconds, device, world size."""

    def __init__(self, filename: str = "train_stats.json"):
        self.filename = filename

    def after_train(self):
        t = self.trainer
        if not t.is_main or t.error is not None:
            return
        stats = t.throughput()
        (Path(t.run_dir) / self.filename).write_text(json.dumps(stats, indent=2) + "\n")
