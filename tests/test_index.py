"""`index` and `search` as a user runs them, with a random-weight tiny student (deterministic
detections and embeddings; whether it recognises anyone is not the point here): the
interface, kill -9 and resume, new sources only, the model guard, torchrun sharding."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import cli
from footage_helpers import FOOTAGE_FRAMES as FRAMES, index_args, random_student
from pipeline.data.footage import load_frames, plan_frames, find_sources
from pipeline.footage.store import PENDING, open_gallery, read_track_table
from pipeline.footage.tracks import link_tracks
from pipeline.runtime.types import RunSettings

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output.strip().splitlines()


def detections(gallery_dir):
    """Frames in gallery order with their boxes, scores and embeddings."""
    g = open_gallery(gallery_dir)
    keys = list(zip(g.frame_source, g.frame_index.tolist()))
    return keys, g.boxes, g.scores, g.embeddings(np.arange(g.num_detections)), g


def assert_same_tracks(a_dir, b_dir, atol=1e-5):
    """The same stored tracks: each detection's track id and the track table, exactly (pooled
    embeddings to ``atol``)."""
    a, b = (read_track_table(d, open_gallery(d).manifest.tracks) for d in (a_dir, b_dir))
    assert len(a) > 0 and np.array_equal(a.track_of, b.track_of)
    assert a.camera == b.camera and a.source == b.source
    for column in ("start", "end", "frames", "best"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=atol)


def assert_same_detections(a, b):
    """Same frames in the same order, same detections up to float rounding (another thread
    count sums in another order)."""
    assert a[0] == b[0]
    # boxes in pixels; embeddings stored as float16: one rounding step apart at most
    for x, y, atol in zip(a[1:4], b[1:4], (1e-3, 1e-5, 5e-4)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)


@pytest.fixture
def student(random_student_checkpoint):
    return random_student_checkpoint


@pytest.fixture
def reference(footage_gallery):
    """One uninterrupted run over the footage (read only)."""
    return footage_gallery


def test_index_interface_and_contents(reference, synthetic_footage):
    assert (reference.parent / "index-output.txt").read_text().splitlines()[-1] == str(reference)
    keys, boxes, scores, emb, g = detections(reference)
    assert len(keys) == FRAMES and g.cameras == ["cam1", "cam2", "cam3"]
    assert keys[:2] == [(str(synthetic_footage / "cam1.mp4"), 0),
                        (str(synthetic_footage / "cam1.mp4"), 1)]
    assert g.frame_time_or_none(3) == 1.5 and g.model.kind == "student"
    assert len(boxes) > 0 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert g.index().ntotal == len(boxes) and g.index_kind == "flat"


def test_search_interface_files_and_query_kinds(reference, tmp_path):
    g = open_gallery(reference)
    hit = int(g.detections_of(5)[0])
    lines = run_cli(["search", "--gallery", str(reference), "--hit", str(hit), "--top", "7",
                     "--out", str(tmp_path / "r")])
    assert lines[-1] == str(tmp_path / "r" / "results.html")
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    assert set(result) >= {"query", "hits"} and len(result["hits"]) == 7
    for h in result["hits"]:
        assert set(h) >= {"rank", "similarity", "source", "frame", "time", "camera", "box"}
        assert (h["source"], h["frame"]) != (g.frame_source[5], int(g.frame_index[5]))
    assert [h["rank"] for h in result["hits"]] == list(range(1, 8))
    assert result["hits"] == sorted(result["hits"], key=lambda h: -h["similarity"])
    # the same person as a picture + box, then as a crop: the model embeds it again
    rgb = load_frames(plan_frames(find_sources(g.frame_source[5])[0], 0.5)[5:6])[0]
    Image.fromarray(rgb).save(tmp_path / "frame.png")
    box = ",".join(f"{v:.2f}" for v in g.boxes[hit])
    run_cli(["search", "--gallery", str(reference), "--query", str(tmp_path / "frame.png"),
             "--box", box, "--top", "3", "--out", str(tmp_path / "q")])
    q = json.loads((tmp_path / "q" / "results.json").read_text())
    assert q["query"]["kind"] == "image" and q["query"]["box"] == pytest.approx(g.boxes[hit], abs=0.01)
    x1, y1, x2, y2 = (int(round(v)) for v in g.boxes[hit])
    Image.fromarray(rgb[y1:y2, x1:x2]).save(tmp_path / "crop.png")
    run_cli(["search", "--gallery", str(reference), "--query", str(tmp_path / "crop.png"),
             "--camera", "cam2", "--from", "1", "--to", "4", "--out", str(tmp_path / "c")])
    c = json.loads((tmp_path / "c" / "results.json").read_text())
    assert c["query"]["kind"] == "crop" and c["hits"]
    assert all(h["camera"] == "cam2" and 1 <= h["time"] <= 4 for h in c["hits"])


@pytest.mark.parametrize("args,words", [
    (["--hit", "999999"], "no detection 999999"),
    (["--query", "missing.png"], "cannot be read"),
    (["--query", "cli.py"], "not a picture"),
    (["--hit", "0", "--camera", "cam9"], "no camera 'cam9'"),
    (["--hit", "0", "--box", "1,2,3"], "--box goes with --query"),
    ([], "exactly one of --query"),
])
def test_search_input_errors_are_one_line(reference, tmp_path, args, words):
    r = CliRunner().invoke(cli, ["search", "--gallery", str(reference), "--out",
                                 str(tmp_path / "r"), *args])
    assert r.exit_code != 0 and words in r.output and "Traceback" not in r.output, r.output


def test_box_outside_the_image_is_refused(reference, tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "p.png")
    r = CliRunner().invoke(cli, ["search", "--gallery", str(reference), "--query",
                                 str(tmp_path / "p.png"), "--box", "0,0,41,30", "--out",
                                 str(tmp_path / "r")])
    assert r.exit_code != 0 and "not inside the 40x30 image" in r.output


def test_new_sources_embed_only_new_frames(reference, synthetic_footage, student, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(reference, gallery)
    before = detections(gallery)
    stills = tmp_path / "stills"
    refs = plan_frames(find_sources(str(synthetic_footage / "cam2.mp4"))[0], 2.0)[:2]
    for i, rgb in enumerate(load_frames(refs)):
        (stills / "door").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(stills / "door" / f"{i}.jpg")
    (stills / "door" / "broken.jpg").write_bytes(b"no picture")
    r = CliRunner().invoke(cli, index_args(gallery, student, synthetic_footage, stills))
    assert r.exit_code == 0, r.output
    assert "indexed 2 new frames" in r.output and "broken.jpg" in r.output
    after = detections(gallery)
    n = len(before[1])
    assert after[0][:FRAMES] == before[0] and len(after[0]) == FRAMES + 2
    np.testing.assert_array_equal(after[1][:n], before[1])   # old ids untouched
    assert after[4].frame_camera[-1] == "door" and after[4].frame_time_or_none(FRAMES) is None
    old, new = (read_track_table(d, open_gallery(d).manifest.tracks) for d in (reference, gallery))
    np.testing.assert_array_equal(new.track_of[:n], old.track_of)     # old tracks untouched
    np.testing.assert_array_equal(new.track_of, link_tracks(after[4]))
    again = CliRunner().invoke(cli, index_args(gallery, student, synthetic_footage, stills))
    assert "indexed 0 new frames" in again.output


def test_another_model_is_refused_by_index_and_search(reference, tmp_path):
    other = random_student(tmp_path / "other.pt")
    with torch.no_grad():   # other weights at another path
        ckpt = torch.load(other, weights_only=False)
        key = next(k for k in ckpt["model"] if k.endswith("weight"))
        ckpt["model"][key] += 1
        torch.save(ckpt, other)
    Image.new("RGB", (40, 30)).save(tmp_path / "p.png")
    r = CliRunner().invoke(cli, index_args(reference, other, tmp_path))
    assert r.exit_code != 0 and "student.pt" in r.output and "other.pt" in r.output, r.output
    r = CliRunner().invoke(cli, ["search", "--gallery", str(reference), "--hit", "0",
                                 "--model", str(other), "--out", str(tmp_path / "h")])
    assert r.exit_code != 0 and "other.pt" in r.output, r.output
    r = CliRunner().invoke(cli, ["search", "--gallery", str(reference), "--query",
                                 str(tmp_path / "p.png"), "--model", str(other), "--out",
                                 str(tmp_path / "r")])
    assert r.exit_code != 0 and "student.pt" in r.output and "other.pt" in r.output, r.output


def _pending_segments(gallery: Path) -> int:
    path = gallery / PENDING / "rank-0.json"
    try:
        return len(json.loads(path.read_text())["segments"])
    except (OSError, ValueError):
        return 0


def test_kill_9_midway_then_resume_gives_the_same_detections_and_tracks(
        reference, synthetic_footage, student, tmp_path):
    gallery = tmp_path / "gallery"
    cmd = [sys.executable, str(ROOT / "cli.py"),
           *index_args(gallery, student, synthetic_footage, chunk=2)]
    for segments_before_kill in (1, 6):   # two interrupted runs, the second resumed first
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 600   # a loaded machine starts python slowly
        while _pending_segments(gallery) < segments_before_kill and proc.poll() is None:
            assert time.time() < deadline, "index run made no progress"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (gallery / "gallery.json").exists(), "the run finished before the kill"
    done = _pending_segments(gallery)
    assert 6 <= done <= FRAMES // 2
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"indexed {FRAMES - 2 * done} new frames" in out.stdout  # the rest only
    assert_same_detections(detections(gallery), detections(reference))
    assert_same_tracks(gallery, reference)


def _ddp_worker(rank, world, port, gallery, model, sources):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pipeline.engine.distributed import cleanup
    from pipeline.footage.indexing import index_footage
    index_footage(gallery, model, sources, every=0.5, min_score=0.0, workers=0,
                  chunk_frames=4, progress=False)
    cleanup()


def test_torchrun_shards_merge_into_the_same_gallery(reference, synthetic_footage, student,
                                                     tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gallery = tmp_path / "gallery"
    torch.multiprocessing.spawn(_ddp_worker, nprocs=2, join=True, args=(
        2, port, str(gallery), str(student), [str(synthetic_footage)]))
    segments = open_gallery(gallery).manifest.segments
    assert {s.file.split("-")[1] for s in segments} == {"r0", "r1"}   # both ranks wrote
    assert_same_detections(detections(gallery), detections(reference))
    assert_same_tracks(gallery, reference, atol=5e-4)   # float16 rows, as above


def test_run_settings_are_recorded_used_and_kept(synthetic_footage, student, reference,
                                                 tmp_path):
    """--size/--proposals/--bf16 change what is embedded, are recorded with the model, hold
    for every later run (a run at other settings is refused, naming both) and for queries."""
    fast = tmp_path / "fast"
    run_cli(index_args(fast, student, synthetic_footage) + ["--size", "48", "--proposals", "5",
                                                            "--bf16"])
    g = open_gallery(fast)
    assert g.model.settings == RunSettings(size=48, proposals=5, bf16=True)
    assert np.diff(g.frame_offsets).max() <= 5
    plain = open_gallery(reference)          # the same footage and model, as trained
    assert plain.model.settings == RunSettings()
    assert plain.num_detections > g.num_detections       # as trained: more
    r = CliRunner().invoke(cli, index_args(fast, student, synthetic_footage))
    assert r.exit_code != 0 and "size=48 proposals=5 bf16" in r.output, r.output
    again = CliRunner().invoke(cli, index_args(fast, student, synthetic_footage)
                               + ["--size", "48", "--proposals", "5", "--bf16"])
    assert again.exit_code == 0 and "indexed 0 new frames" in again.output, again.output
    from pipeline.footage.query_model import QueryEmbedder
    embedder = QueryEmbedder(g)
    rgb = np.zeros((60, 80, 3), np.uint8)
    assert embedder.embed(rgb, [10, 5, 40, 55]).shape == (g.embedding_dim,)
    assert embedder.searcher().input_size[0] == 48 and g.model.settings.bf16
