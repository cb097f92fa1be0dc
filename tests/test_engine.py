"""The training engine on a toy model: exact resume, non-finite stop, logs, schedules, DDP."""
import csv
import json
import math
import os
import socket

import pytest
import torch
from torch import nn

from pipeline.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from pipeline.engine.schedule import WarmupSchedule, build_scheduler
from pipeline.engine.trainer import NonFiniteLossError, Trainer, build_train_loader
from pipeline.engine.hooks import HookBase


class ToyData(torch.utils.data.Dataset):
    """Regression data whose augmentation noise depends on (seed, epoch, index) only."""

    def __init__(self, n=12, seed=0):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 104729 + i)
        return self.x[i] + 0.05 * torch.randn(4, generator=g), self.y[i]


class Toy(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.model_args = {"hidden": hidden}
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def toy_step(model, batch, device):
    x, y = (t.to(device) for t in batch)
    err = model(x) - y
    # torch RNG inside the step (like RPN sampling): resume must restore it
    w = torch.rand(len(y), device=device) + 0.5
    return {"mse": (w * err ** 2).mean(), "l1": 0.1 * err.abs().mean()}


def make_trainer(run_dir, *, epochs=3, seed=0, hooks=(), step_fn=toy_step, schedule="cosine",
                 model_seed=0, milestones=(2,), **kw):
    torch.manual_seed(model_seed)
    model = Toy()
    loader = build_train_loader(ToyData(), batch_size=4, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = build_scheduler(opt, schedule=schedule, iters_per_epoch=len(loader), epochs=epochs,
                            warmup_iters=4, warmup_factor=0.1, milestones_epochs=milestones)
    return Trainer(model, opt, loader, run_dir, step_fn=step_fn, max_epochs=epochs,
                   scheduler=sched, grad_clip=5.0, hooks=hooks, progress=False,
                   config_dict={"toy": {"epochs": epochs}}, **kw)


class StopBefore(HookBase):
    """Simulates a crash at the start of an epoch."""

    def __init__(self, epoch):
        self.at = epoch

    def before_epoch(self):
        if self.trainer.epoch == self.at:
            raise KeyboardInterrupt


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, schedule):
    a = make_trainer(tmp_path / "a", schedule=schedule)
    a.train()
    b = make_trainer(tmp_path / "b", schedule=schedule, hooks=[StopBefore(2)])
    with pytest.raises(KeyboardInterrupt):
        b.train()
    assert read_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["epoch"] == 2
    # a fresh process would build a fresh model (other init) and RNG state: resume fixes both
    torch.manual_seed(999)
    c = make_trainer(tmp_path / "b", schedule=schedule, model_seed=5)
    c.train(resume=True)
    assert c.global_step == a.global_step == 9
    sa, sc = a.model.state_dict(), c.model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sc[k]), k
    assert a.optimizer.param_groups[0]["lr"] == c.optimizer.param_groups[0]["lr"]
    # the log of the resumed run is the log of the uninterrupted one
    rows_a, rows_c = read_csv(tmp_path / "a" / "losses.csv"), read_csv(tmp_path / "b" / "losses.csv")
    assert rows_a == rows_c and len(rows_a) == 9


def test_files_written_and_logged_lr_follows_the_schedule(tmp_path):
    t = make_trainer(tmp_path, epochs=2, schedule="step", milestones=(1,))
    t.train()
    for name in ("losses.csv", "losses.png", "config.yaml", "git_revision.txt",
                 "checkpoint_last.pt", "checkpoint_epoch001.pt", "checkpoint_epoch002.pt",
                 "train_stats.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(tmp_path / "losses.csv")
    assert list(rows[0]) == ["step", "epoch", "lr", "loss", "mse", "l1", "grad_norm"]
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    # hand-checked: warm-up over 4 iterations from 0.1, then x0.1 at epoch 2 (iteration 3)
    expected = [0.05 * f for f in (0.1, 0.325, 0.55, 0.1 * 0.775, 0.1, 0.1)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5)
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["mse"]) + float(r["l1"]), rel=1e-4)
    stats = json.loads((tmp_path / "train_stats.json").read_text())
    assert stats["images_per_s"] > 0 and stats["steps"] == 6 and stats["images"] == 20
    ckpt = read_checkpoint(tmp_path / "checkpoint_last.pt")
    assert ckpt["model_args"] == {"hidden": 8} and ckpt["epoch"] == 2 and ckpt["global_step"] == 6
    assert ckpt["config"] == {"toy": {"epochs": 2}}
    first = read_checkpoint(tmp_path / "checkpoint_epoch001.pt")
    assert first["epoch"] == 1  # the per-epoch copy is not overwritten by later epochs


def test_schedule_values_by_hand():
    s = WarmupSchedule(schedule="step", warmup_iters=4, warmup_factor=0.2, milestones=[6, 8],
                       gamma=0.1)
    assert [s(i) for i in range(10)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1, 1, 0.1, 0.1, 0.01, 0.01])
    c = WarmupSchedule(schedule="cosine", total_iters=10)
    assert c(0) == 1 and c(5) == pytest.approx(0.5) and c(10) == pytest.approx(0) and c(20) == 0
    cw = WarmupSchedule(schedule="cosine", total_iters=10, warmup_iters=4, warmup_factor=0.2)
    assert cw(2) == pytest.approx(0.6 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    with pytest.raises(ValueError, match="unknown lr schedule"):
        WarmupSchedule(schedule="poly")


def test_non_finite_loss_stops_with_the_loss_and_step_named(tmp_path):
    def step(model, batch, device):
        losses = toy_step(model, batch, device)
        if trainer.global_step + 1 == 5:
            losses["l1"] = losses["l1"] * float("nan")
        return losses

    trainer = make_trainer(tmp_path, step_fn=step)
    with pytest.raises(NonFiniteLossError, match=r"'l1' = nan at step 5 \(epoch 2\)") as e:
        trainer.train()
    assert "checkpoint_last.pt" in str(e.value)
    ckpt = read_checkpoint(tmp_path / "checkpoint_last.pt")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 3  # the last good one, untouched
    rows = read_csv(tmp_path / "losses.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert not (tmp_path / "train_stats.json").exists()


def test_strict_load_refuses_another_model(tmp_path):
    make_trainer(tmp_path, epochs=1).train()
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(CheckpointError, match="another kind of model"):
        load_checkpoint(tmp_path / "checkpoint_last.pt", other)
    with pytest.raises(CheckpointError, match="does not fit.*shape mismatch"):
        load_checkpoint(tmp_path / "checkpoint_last.pt", Toy(hidden=5))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt", Toy())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is unusable: it is not a PyTorch file"):
        load_checkpoint(tmp_path / "junk.pt", Toy())
    model = Toy()
    ckpt = load_checkpoint(tmp_path / "checkpoint_last.pt", model)
    assert ckpt["model_args"] == {"hidden": 8}


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        make_trainer(tmp_path).train(resume=True)


def _ddp_worker(rank, world, port, run_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    from pipeline.engine.distributed import cleanup, init_distributed
    device, distributed = init_distributed("cpu")
    t = make_trainer(run_dir, epochs=2, distributed=distributed, tensorboard=False)
    t.train()
    torch.save({k: v.clone() for k, v in t.model.module.state_dict().items()}, f"{out}/{rank}.pt")
    cleanup()


def test_ddp_on_cpu_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path / "run"), str(tmp_path)),
                                nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # gradients were averaged: replicas agree
    rows = read_csv(tmp_path / "run" / "losses.csv")
    assert len(rows) == 4  # 12 images, 2 ranks, batch 4 -> 2 steps per epoch, logged once
    stats = json.loads((tmp_path / "run" / "train_stats.json").read_text())
    assert stats["world_size"] == 2


def _oim_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    from pipeline.engine.distributed import cleanup, init_distributed
    from pipeline.models.oim import IGNORE, OIMLoss
    init_distributed("cpu")
    oim = OIMLoss([10, 20, 30], 4, momentum=0.0, queue_size=4).train()
    # rank 0 sees identity row 0 and one unlabeled person; rank 1 row 2 and two unlabeled
    x = torch.eye(4)[: 2 + rank] if rank else torch.eye(4)[:2]
    labels = torch.tensor([0, IGNORE]) if rank == 0 else torch.tensor([2, IGNORE, IGNORE])
    oim(x, labels)
    torch.save({k: v.clone() for k, v in oim.state_dict().items()}, f"{out}/oim{rank}.pt")
    cleanup()


def test_oim_tables_take_every_ranks_people_under_ddp(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_oim_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "oim0.pt"), torch.load(tmp_path / "oim1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    eye = torch.eye(4)
    assert torch.equal(a["lut"], torch.stack([eye[0], torch.zeros(4), eye[0]]))
    # queue in rank order: rank 0's unlabeled row, then rank 1's two
    assert torch.equal(a["queue"][:3], torch.stack([eye[1], eye[1], eye[2]]))
    assert int(a["queue_ptr"]) == 3
