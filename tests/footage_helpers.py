"""Footage for tests: tiny synthetic videos of the tiny PRW world's people, a random-weight
tiny student (detections and embeddings are deterministic, identities are not learned), and
galleries written straight through the store library."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from conftest import TINY_PRW
from pipeline.footage.store import FrameBlock, GalleryWriter, RunHeader, commit, shared_training
from pipeline.footage.track_store import make_track_table
from pipeline.runtime.types import Detections, ModelInfo

# the tiny PRW world's people walking past its 3 cameras: 6 s at 2 fps, 160x120
TINY_VIDEO = dict(**TINY_PRW, seconds=6.0, fps=2, walkers=3, passers=1)
FOOTAGE_FRAMES = 36     # 3 cameras x 12 frames, all sampled with --every 0.5
FAKE_MODEL = ModelInfo("student", "fake.pt", "f" * 64)


def index_args(gallery, model, *sources, chunk=4):
    """`cli.py index` over the tiny footage: every frame, every detection, small chunks."""
    return ["index", "--gallery", str(gallery), "--model", str(model), *map(str, sources),
            "--every", "0.5", "--min-score", "0", "--workers", "1", "--chunk", str(chunk),
            "--no-progress"]


def random_student(path: Path) -> Path:
    """A tiny student with random weights, every detection kept (score threshold 0)."""
    from pipeline.distill.student import build_student
    from pipeline.models.checkpoint import save_checkpoint
    from student_helpers import PIDS, tiny_model_cfg
    torch.manual_seed(0)
    net = build_student(tiny_model_cfg(det_score_thresh=0.0, rpn_post_nms_top_n_test=10),
                        None, PIDS)
    return Path(save_checkpoint(path, net.eval()))


def jpeg(width=32, height=24, colour=(90, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="JPEG")
    return out.getvalue()


def fake_block(sources, frames, *, times=None, cameras=None, per_frame=2, dim=8, seed=0,
               size=(32, 24)) -> FrameBlock:
    """Frames with ``per_frame`` random detections each (boxes inside ``size``)."""
    g = np.random.default_rng(seed)
    n = len(sources)
    t = n * per_frame
    xy = g.uniform(0, [size[0] / 2, size[1] / 2], (t, 2))
    boxes = np.concatenate([xy, xy + g.uniform(2, [size[0] / 2, size[1] / 2], (t, 2))], 1)
    return FrameBlock(
        sources=list(sources), frames=np.asarray(frames, np.int64),
        times=np.asarray([np.nan] * n if times is None else times, np.float64),
        cameras=list(cameras or ["cam1"] * n), widths=np.full(n, size[0]),
        heights=np.full(n, size[1]), previews=[jpeg(*size)] * n,
        detections=Detections(np.arange(n + 1, dtype=np.int64) * per_frame,
                              boxes.astype(np.float32), g.uniform(0.5, 1, t).astype(np.float32),
                              g.standard_normal((t, dim)).astype(np.float32)))


def fake_gallery(directory: Path, blocks, *, kind="flat", dim=8, model=FAKE_MODEL,
                 ivfpq_trained: Path | None = None) -> Path:
    """A committed gallery of the given FrameBlocks, with its tracks (``ivfpq_trained``: the
    ivfpq gallery whose training it shares, as ``index --ivfpq-trained``)."""
    w = GalleryWriter(directory, RunHeader(model, dim, 0.5))
    for b in blocks:
        w.add(b)
    w.close()
    header = RunHeader(model, dim, 0.5)
    training = shared_training(directory, ivfpq_trained, header) if ivfpq_trained else None
    commit(directory, header, index_kind=kind, tracks=make_track_table, training=training)
    return directory


# ------------------------------------------------------------------------------ a trained model

# A small two-step teacher that really detects and tells the synthetic people apart, trained
# once per test session in about 80 s of one core: a synthetic world of 128x96 frames (people
# 40-85 px tall, 15 training identities), a ResNet-18-FPN detector for 78 steps, a ResNet-18
# Re-ID on 48x24 crops for 15 epochs (as good on its footage as 30 at half the rate: the same
# 20 of 28 walker detections find their walker on top; 4 detector epochs find none). Its footage shows that world's test identities, never seen in training.
TEACHER_WORLD = dict(identities=30, images=100, size=(128, 96), cameras=3, seed=0)
TEACHER_FOOTAGE = dict(**TEACHER_WORLD, seconds=6.0, fps=2, walkers=3, passers=1)
TEACHER_TREE = {
    "data": {"dataset": "prw", "workers": 0},
    "detector": {"backbone": "resnet18", "fpn_channels": 32, "box_head_dim": 128,
                 "min_size": 96, "max_size": 128, "rpn_pre_nms_top_n_train": 300,
                 "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 200,
                 "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 64,
                 "box_detections_per_img": 20, "box_score_thresh": 0.05, "epochs": 6,
                 "batch_size": 4, "lr": 0.02, "warmup_iters": 10, "milestones": [5],
                 "workers": 0},
    "reid": {"backbone": "resnet18", "embedding_dim": 32, "crop_height": 48, "crop_width": 24,
             "ids_per_batch": 4, "crops_per_id": 4, "epochs": 15, "lr": 0.002,
             "warmup_iters": 5, "milestones": [], "workers": 0},
    "cache": {"workers": 0},
}


def trained_teacher(base: Path) -> Path:
    """Make the world, train both teachers, write their YAML config; returns its path."""
    import yaml

    from pipeline.config import from_dict, to_dict
    from pipeline.config.teacher import TeacherConfig
    from pipeline.data.synthetic import make_synthetic
    from pipeline.stages.teachers import train_detector, train_reid
    root = make_synthetic("prw", base / "world", **TEACHER_WORLD)
    tree = {k: dict(v) for k, v in TEACHER_TREE.items()}
    tree["data"]["root"] = str(root)
    tree["cache"]["dir"] = str(base / "cache")
    tree["out_dir"] = str(base / "teachers")
    cfg = from_dict(TeacherConfig, tree)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the same teacher whether the suite runs in one process or two
    try:
        train_detector(cfg, progress=False)
        train_reid(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    path = base / "teacher.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


def fail_the_moves_after(monkeypatch, done: int, *modules: str) -> None:
    """Make the atomic file moves (``os.replace`` as ``modules`` see it) fail after ``done``
    of them: a disk that goes away in the middle of a commit."""
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) > done:
            raise OSError("disk gone")
        return real(src, dst)
    for module in modules or ("pipeline.files",):
        monkeypatch.setattr(f"{module}.os.replace", flaky)


def encode_video(path, frames, fps, *, codec: str = "libx264", gop: int = 3, options=None):
    """Write the (H, W, 3) uint8 ``frames`` as a video at ``fps`` (frame i at time i / fps),
    a keyframe every ``gop`` frames; ``options``: the container's (e.g. faststart)."""
    frames = list(frames)
    container = av.open(str(path), "w", options=options or {})
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", gop
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = i
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


KILLED_AFTER_THE_LISTS = """
import os, sys
import pipeline.footage.store.ondisk as ondisk
real = ondisk.merge_blocks
def merge_then_die(*args):
    real(*args)                    # the new ivfpq lists are written, the manifest not yet
    os.kill(os.getpid(), 9)
ondisk.merge_blocks = merge_then_die
"""


def kill_after_the_lists(code: str, *args) -> None:
    """Run the Python ``code`` (``sys.argv[1:]`` = ``args``) in a process that kills itself
    (-9) once it has written new ivfpq lists, before any manifest names them."""
    run_killed(KILLED_AFTER_THE_LISTS + code, *args)


def run_killed(code: str, *args) -> None:
    """Run the Python ``code`` (``sys.argv[1:]`` = ``args``), which must kill itself (-9)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}"}
    killed = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=root, env=env,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
