"""Media as it comes from cameras and phones, made here: a recording cut off at several
offsets keeps every frame that decodes and says how much it lost; unreadable sources are
listed by name; a run of which nothing could be indexed exits non-zero and leaves no gallery;
the gallery still opens and searches afterwards."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from footage_helpers import encode_video, index_args
from pipeline.data.footage import find_sources, plan_source, read_frames
from pipeline.footage.store import MANIFEST, PENDING, SEGMENTS, open_gallery

FRAMES, FPS = 45, 15
LONG_FRAMES = 16        # at 2 fps, each one indexed: 8 segments of 2 frames to kill amid
ROOT = Path(__file__).resolve().parent.parent


def recording(path, frames=FRAMES, fps=FPS, size=(64, 48)):
    """An H.264 MP4 with its index first (faststart, as phones write them) and noisy frames,
    so every frame's packet is large and a cut lands inside the frame data."""
    rng = np.random.default_rng(0)
    noise = (rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(frames))
    return encode_video(path, noise, fps, gop=10, options={"movflags": "faststart"})


def sound(path):
    """A container without a video stream: a second of silence."""
    container = av.open(str(path), "w")
    stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16",
                                       layout="mono")
    frame.sample_rate = 8000
    for packet in [*stream.encode(frame), *stream.encode()]:
        container.mux(packet)
    container.close()
    return path


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_a_cut_off_recording_keeps_every_frame_that_decodes(tmp_path, fraction):
    data = recording(tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cam3.mp4"
    cut.write_bytes(data[:int(len(data) * fraction)])
    plan = plan_source(find_sources(str(cut))[0], every=1 / FPS)
    kept = len(plan.refs)
    assert 0.5 * fraction * FRAMES < kept < fraction * FRAMES + 2
    assert plan.lost == f"{cut}: {kept} of ~{FRAMES} frames, stream ends early"
    assert all(frame is not None for frame in read_frames(plan.refs))   # each one decodes


def test_index_lists_partial_and_skipped_sources_and_searches(tmp_path,
                                                             random_student_checkpoint):
    footage = tmp_path / "footage"
    footage.mkdir()
    data = recording(tmp_path / "whole.mp4", frames=12, fps=4).read_bytes()
    (footage / "cam3.mp4").write_bytes(data[:len(data) // 2])
    (footage / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    sound(footage / "sound.mkv")
    gallery = tmp_path / "g"
    r = CliRunner().invoke(cli, index_args(gallery, random_student_checkpoint, footage))
    assert r.exit_code == 0, r.output
    assert "partly indexed: " in r.output and "cam3.mp4: " in r.output
    assert "stream ends early" in r.output
    skipped = [line for line in r.output.splitlines() if line.startswith("skipped: ")]
    assert any("broken.jpg" in line for line in skipped), r.output
    assert any("sound.mkv: holds no video stream" in line for line in skipped), r.output
    g = open_gallery(gallery)
    assert g.num_frames > 0 and set(g.frame_source) == {str(footage / "cam3.mp4")}
    r = CliRunner().invoke(cli, ["search", "--gallery", str(gallery), "--hit", "0",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output


def test_nothing_indexed_exits_non_zero_and_makes_no_gallery(tmp_path,
                                                             random_student_checkpoint):
    footage = tmp_path / "footage"
    footage.mkdir()
    (footage / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (footage / "b.mp4").write_bytes(b"not a video")
    gallery = tmp_path / "g"
    r = CliRunner().invoke(cli, index_args(gallery, random_student_checkpoint, footage))
    assert r.exit_code == 1, r.output
    assert "nothing could be indexed" in r.output and "no gallery was written" in r.output
    assert not gallery.exists()


def _pending(gallery: Path) -> list[str]:
    try:
        return [s["file"] for s in json.loads((gallery / PENDING / "rank-0.json").read_text())
                ["segments"]]
    except (OSError, ValueError):
        return []


def _detections(gallery: Path):
    g = open_gallery(gallery)
    return (list(zip(g.frame_source, g.frame_index.tolist())), g.boxes, g.scores,
            g.embeddings(np.arange(g.num_detections)))


def test_kill_9_amid_a_long_video_then_a_rerun_gives_one_runs_detections(
        tmp_path, random_student_checkpoint):
    (tmp_path / "footage").mkdir()
    video = recording(tmp_path / "footage" / "long.mp4", frames=LONG_FRAMES, fps=2)
    whole, gallery = tmp_path / "whole", tmp_path / "killed"
    r = CliRunner().invoke(cli, index_args(whole, random_student_checkpoint, video, chunk=2)
                           + ["--size", "48"])
    assert r.exit_code == 0, r.output
    args = index_args(gallery, random_student_checkpoint, video, chunk=2) + ["--size", "48"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300      # a loaded machine starts python slowly
    while not _pending(gallery) and proc.poll() is None:
        assert time.time() < deadline, "index run made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before the kill"
    assert not (gallery / MANIFEST).exists()
    listed = _pending(gallery)
    # what a kill in the middle of writing the next segment leaves beside it
    first = gallery / SEGMENTS / listed[0]
    (gallery / SEGMENTS / f".seg-r0-partial.h5.0123abcd.tmp").write_bytes(
        first.read_bytes()[:first.stat().st_size // 2])
    partial = {p.name for p in (gallery / SEGMENTS).iterdir()} - set(listed)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert f"indexed {LONG_FRAMES - 2 * len(listed)} new frames" in r.output, r.output
    a, b = _detections(gallery), _detections(whole)
    assert a[0] == b[0] and len(a[0]) == LONG_FRAMES
    for x, y in zip(a[1:], b[1:]):      # boxes, scores, embeddings
        np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-5)
    kept = {p.name for p in (gallery / SEGMENTS).iterdir()}
    assert kept == {s.file for s in open_gallery(gallery).manifest.segments}
    assert partial and not partial & kept       # the partial segment is discarded
