"""A small training loop: the step does data -> losses -> backward -> (clip) -> step; the rest
(lr schedule, checkpoints, logs, plots, progress, evaluation) are hooks (detectron2's
``SimpleTrainer`` plus ``HookBase``).

```python
trainer = Trainer(model, optimizer, loader, run_dir, step_fn=step_fn, max_epochs=10,
                  scheduler=sched, grad_clip=10.0, device="cuda", amp=True)
trainer.train(resume=False)
```

``step_fn(model, batch, device) -> dict[str, Tensor]`` returns weighted losses; the trainer
sums them. ``metrics_fn(model) -> dict[str, Tensor]`` (optional) adds scalars to each step's log
row that are not losses (the weights a learned loss balance gave this step). Determinism: the data order of an epoch depends only on (seed, epoch) — the trainer
calls ``set_epoch(epoch)`` on the loader's sampler and dataset before each epoch — and every RNG
state is checkpointed, so ``train(resume=True)`` from ``checkpoint_last.pt`` ends with the same
weights as a run that was never interrupted.
"""
from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from pipeline.engine import distributed as dist_utils
from pipeline.engine import hooks as H
from pipeline.errors import UserError
from pipeline.files import link_or_copy
from pipeline.models.checkpoint import load_checkpoint, save_checkpoint
from pipeline.models.precision import autocast

StepFn = Callable[[nn.Module, object, torch.device], dict]
MetricsFn = Callable[[nn.Module], dict]


class NonFiniteLossError(UserError, RuntimeError):
    """A loss became NaN or infinite; the message names the loss and the step."""


# ------------------------------------------------------------------------------ data order

class EpochSampler(Sampler[int]):
    """Shuffled indices that depend only on (seed, epoch): the same order after a resume."""

    def __init__(self, n: int, *, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def build_train_loader(dataset: Dataset, *, batch_size: int, collate_fn=None, workers: int = 0,
                       seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                       distributed: bool | None = None, pin_memory: bool = False) -> DataLoader:
    """A training loader with a deterministic per-epoch order (DistributedSampler under DDP)."""
    if distributed is None:
        distributed = dist_utils.is_distributed()
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    else:
        sampler = EpochSampler(len(dataset), seed=seed, shuffle=shuffle)
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                      generator=g, persistent_workers=False)


def count_images(batch) -> int:
    """Images in a batch: ``(list_of_images, targets)`` or a tensor batch ``(B, ...)``."""
    if isinstance(batch, (tuple, list)) and batch:
        first = batch[0]
        if isinstance(first, (list, tuple)):
            return len(first)
        if torch.is_tensor(first):
            return int(first.shape[0]) if first.dim() > 0 else 1
    if torch.is_tensor(batch):
        return int(batch.shape[0])
    return 1


def git_revision(cwd: str | Path | None = None) -> str:
    """``<commit>`` (plus ``-dirty`` with uncommitted changes), or ``unknown`` outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if not rev:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------------ trainer

class Trainer:
    """Runs ``max_epochs`` epochs of ``step_fn`` over ``data_loader``; see the module doc."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, data_loader: Iterable,
                 run_dir: str | Path, *, step_fn: StepFn, max_epochs: int, scheduler=None,
                 grad_clip: float | None = None, device: str | torch.device = "cpu",
                 amp: bool = False, hooks: Sequence[H.HookBase] = (), log_every: int = 1,
                 config_dict: dict | None = None, distributed: bool = False,
                 progress: bool = True, tensorboard: bool = True,
                 keep_every_epoch: bool = True, metrics_fn: MetricsFn | None = None):
        self.device = torch.device(device)
        self.distributed = bool(distributed)
        self.rank = dist_utils.rank() if self.distributed else 0
        self.world_size = dist_utils.world_size() if self.distributed else 1
        model.to(self.device)
        self.model_args = getattr(model, "model_args", None)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=True)  # frozen stages, unused heads
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.data_loader = data_loader
        self.run_dir = Path(run_dir)
        self.step_fn = step_fn
        self.metrics_fn = metrics_fn
        self.max_epochs = int(max_epochs)
        self.grad_clip = grad_clip
        self.amp = bool(amp) and self.device.type == "cuda"   # bf16: no loss scaling needed
        self.log_every = max(1, int(log_every))
        self.config_dict = config_dict
        self.iters_per_epoch = len(data_loader)  # type: ignore[arg-type]

        self.epoch = 0            # index of the epoch being run
        self.start_epoch = 0
        self.global_step = 0      # optimizer steps taken
        self.resumed = False
        self.error: BaseException | None = None
        self.images_seen = 0
        self._pending: list[tuple[int, int, float, int, dict]] = []
        self._step_times: list[tuple[float, int]] = []

        defaults: list[H.HookBase] = [H.LRScheduler(), H.ProgressBar(progress), H.CSVLogger()]
        if tensorboard:
            defaults.append(H.TensorBoard())
        defaults += [H.Checkpointer(keep_every_epoch), H.LossPlot(), H.TrainStats()]
        self.hooks: list[H.HookBase] = []
        for h in [*defaults, *hooks]:
            h.trainer = self
            self.hooks.append(h)

    # ---------------------------------------------------------------- helpers
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint_last.pt"

    def barrier(self) -> None:
        if self.distributed:
            dist_utils.barrier()

    def _call(self, name: str, *args) -> None:
        for h in self.hooks:
            getattr(h, name)(*args)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save_checkpoint(self, keep_copy: bool = True) -> Path:
        """``checkpoint_last.pt`` for the epochs completed so far (+ a per-epoch copy)."""
        path = save_checkpoint(self.checkpoint_path, self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler,
                               epoch=self.epoch + 1, global_step=self.global_step,
                               model_args=self.model_args, config=self.config_dict)
        if keep_copy:
            link_or_copy(path, self.run_dir / f"checkpoint_epoch{self.epoch + 1:03d}.pt")
        return path

    def resume(self) -> dict:
        """Load ``checkpoint_last.pt`` (strictly) with optimizer, scheduler and RNG states."""
        ckpt = load_checkpoint(self.checkpoint_path, self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler,
                               map_location=self.device, restore_rng=True)
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.resumed = True
        return ckpt

    def throughput(self) -> dict:
        """Images/s over this run's steps (the first step, with its start-up cost, left out
        when there are more)."""
        times = self._step_times[1:] if len(self._step_times) > 1 else self._step_times
        secs = sum(t for t, _ in times)
        imgs = sum(n for _, n in times) * self.world_size
        return {"images_per_s": imgs / secs if secs > 0 else None,
                "images": imgs, "seconds": secs, "steps": len(self._step_times),
                "global_step": self.global_step, "epochs": self.max_epochs,
                "device": str(self.device), "world_size": self.world_size,
                "amp_dtype": "bfloat16" if self.amp else None}

    def _write_run_info(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.config_dict is not None:
            (self.run_dir / "config.yaml").write_text(
                yaml.safe_dump(self.config_dict, sort_keys=False))
        (self.run_dir / "git_revision.txt").write_text(git_revision() + "\n")

    def _set_epoch(self, epoch: int) -> None:
        for obj in (getattr(self.data_loader, "sampler", None),
                    getattr(self.data_loader, "batch_sampler", None),
                    getattr(self.data_loader, "dataset", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    # ---------------------------------------------------------------- the loop
    def train(self, resume: bool = False) -> None:
        if self.is_main:
            self._write_run_info()
        self.barrier()
        if resume:
            if not self.checkpoint_path.is_file():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {self.checkpoint_path}")
            self.resume()
        self.model.train()
        self._call("before_train")
        try:
            for epoch in range(self.start_epoch, self.max_epochs):
                self.epoch = epoch
                self._set_epoch(epoch)
                self._call("before_epoch")
                t_prev = time.perf_counter()
                for batch in self.data_loader:
                    self._call("before_step")
                    n = self.run_step(batch)
                    self._call("after_step")
                    now = time.perf_counter()
                    self._step_times.append((now - t_prev, n))
                    if len(self._pending) >= self.log_every:
                        self.flush()
                    t_prev = time.perf_counter()
                self.flush()  # before any checkpoint: a non-finite loss is never saved
                self._call("after_epoch")
        except BaseException as e:
            self.error = e
            raise
        finally:
            self._call("after_train")

    def run_step(self, batch) -> int:
        """data -> losses -> backward -> (clip) -> step. Returns the number of images."""
        n = count_images(batch)
        with autocast(self.device, self.amp):
            losses = self.step_fn(self.model, batch, self.device)
        if not losses:
            raise ValueError("step_fn returned no losses")
        total = sum(v.float() for v in losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        record = {k: v.detach().float() for k, v in losses.items()}
        if self.metrics_fn is not None:   # before the step: what this step's losses used
            module = self.model.module if self.distributed else self.model
            record.update({k: v.detach().float() for k, v in self.metrics_fn(module).items()})
        total.backward()
        if self.grad_clip:
            record["grad_norm"] = self._clip()
        self.optimizer.step()
        lr = self.current_lr()
        self.global_step += 1
        self.images_seen += n
        self._pending.append((self.global_step, self.epoch + 1, lr, n,
                              {"loss": total.detach(), **record}))
        return n

    def _clip(self) -> torch.Tensor:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, self.grad_clip).detach().float()

    def flush(self) -> None:
        """Move the pending step records to the host (one sync), stop on a non-finite loss,
        hand the rows to the hooks."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        keys = [k for *_, rec in pending for k in rec]
        flat = torch.stack([v.reshape(()) for *_, rec in pending for v in rec.values()]).cpu()
        values = flat.tolist()
        bad = any(not math.isfinite(v) for k, v in zip(keys, values) if k != "grad_norm")
        if self.distributed:
            flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        rows, i = [], 0
        first_bad = None
        for step, epoch, lr, _, rec in pending:
            row = {"step": step, "epoch": epoch, "lr": lr}
            for k in rec:
                row[k] = values[i]
                i += 1
                if first_bad is None and k not in ("loss", "grad_norm") and not math.isfinite(row[k]):
                    first_bad = (k, row[k], step, epoch)
            rows.append(row)
        if bad and first_bad is None:  # only the total (or another rank) went bad
            r = next((r for r in rows if not math.isfinite(r["loss"])), rows[-1])
            first_bad = ("loss" if not math.isfinite(r["loss"]) else "loss (on another process)",
                         r["loss"], r["step"], r["epoch"])
        self._call("on_log", [r for r in rows if first_bad is None or r["step"] < first_bad[2]])
        if bad:
            name, value, step, epoch = first_bad
            last = (f"the last good checkpoint is {self.checkpoint_path}"
                    if self.checkpoint_path.is_file() else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite loss: '{name}' = {value} at step {step} (epoch {epoch}); training "
                f"stopped, {last}. Lower the learning rate or enable grad clipping.")
