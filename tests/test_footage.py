"""Footage sources (image folders, videos through PyAV, a release's test frames) and the
synthetic footage with its annotations."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from footage_helpers import encode_video
from pipeline.data.footage import (FootageError, FootageFrames, find_sources, group_frames,
                                   load_frames, plan_frames, preview_jpeg, sample_points,
                                   video_timeline)
from pipeline.data.synthetic.video import (ANNOTATIONS, make_synthetic_video,
                                           read_footage_truth)
from pipeline.data.synthetic.world import SyntheticWorldError, plan_world, prw_pids

COLOURS = [(10 * i, 250 - 10 * i, 128) for i in range(20)]


def write_video(path, fps=4, count=20, size=(64, 48), codec="libx264"):
    """A video whose frame i is filled with COLOURS[i]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colours = (np.full((size[1], size[0], 3), COLOURS[i], np.uint8) for i in range(count))
    return encode_video(path, colours, fps, codec=codec)   # several keyframes: seeking matters


def test_folder_sources_cameras_kinds_and_order(tmp_path):
    for rel in ("cam2/b.jpg", "cam2/sub/c.png", "cam1/a.JPG", "top.jpg", "notes.txt",
                ".hidden/x.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(("jpg", "JPG", "png")):
            Image.new("RGB", (8, 6)).save(tmp_path / rel, format="PNG")
        else:
            (tmp_path / rel).write_text("x")
    write_video(tmp_path / "cam3" / "clip.mp4", count=4)
    write_video(tmp_path / "lobby.mp4", count=4)
    sources = find_sources(str(tmp_path))
    got = [(os.path.relpath(s.path, tmp_path), s.kind, s.camera) for s in sources]
    assert got == [("cam1/a.JPG", "image", "cam1"), ("cam2/b.jpg", "image", "cam2"),
                   ("cam2/sub/c.png", "image", "cam2"), ("cam3/clip.mp4", "video", "cam3"),
                   ("lobby.mp4", "video", "lobby"), ("top.jpg", "image", tmp_path.name)]
    assert all(os.path.isabs(s.path) for s in sources)
    assert {s.camera for s in find_sources(str(tmp_path), camera="door")} == {"door"}
    assert find_sources(str(tmp_path / "lobby.mp4"))[0].camera == "lobby"


@pytest.mark.parametrize("spec,words", [("missing-folder", "no such file or folder"),
                                        ("notes.txt", "not an image"),
                                        ("empty", "holds no images")])
def test_bad_sources_are_named(tmp_path, spec, words):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FootageError, match=words):
        find_sources(str(tmp_path / spec))


def test_release_sources_are_the_test_frames_with_cameras(synthetic_prw):
    from pipeline.data import read_dataset
    data = read_dataset("prw", synthetic_prw)
    sources = find_sources(f"prw:{synthetic_prw}")
    assert sorted(s.path for s in sources) == sorted(os.path.abspath(r.path) for r in data.gallery)
    by_path = {os.path.abspath(r.path): r.camera for r in data.gallery}
    assert all(s.camera == f"c{by_path[s.path]}" and s.kind == "image" for s in sources)


def test_video_sampling_keeps_frame_index_and_time(tmp_path):
    path = str(write_video(tmp_path / "v.mp4", fps=4, count=20))
    assert [(i, t) for i, _, t in sample_points(video_timeline(path), 1.0)] == \
        [(0, 0.0), (4, 1.0), (8, 2.0), (12, 3.0), (16, 4.0)]
    assert [i for i, _, _ in sample_points(video_timeline(path), 0.6)] == \
        [0, 2, 5, 7, 10, 12, 14, 17]
    assert [i for i, _, _ in sample_points(video_timeline(path), 0.01)] == \
        list(range(20))  # each once
    with pytest.raises(FootageError, match="positive"):
        sample_points(video_timeline(path), 0)


@pytest.mark.parametrize("name,codec", [("v.avi", "mpeg4"), ("v.mkv", "libx264"),
                                        ("v.mov", "libx264")])
def test_every_container_samples_and_decodes_the_same_frames(tmp_path, name, codec):
    path = write_video(tmp_path / name, fps=4, count=20, codec=codec)
    refs = plan_frames(find_sources(str(path))[0], 1.0)
    assert [(r.frame, r.time) for r in refs] == [(0, 0.0), (4, 1.0), (8, 2.0), (12, 3.0),
                                                 (16, 4.0)]
    for ref, rgb in zip(refs, load_frames(refs)):
        assert np.abs(rgb.reshape(-1, 3).mean(0) - COLOURS[ref.frame]).max() < 8, ref.frame


def test_decoded_frames_are_the_sampled_ones_in_any_group(tmp_path):
    path = write_video(tmp_path / "v.mp4", fps=4, count=20)
    source = find_sources(str(path))[0]
    refs = plan_frames(source, 0.5)
    frames = load_frames(refs[3:7]) + load_frames(refs[:1])
    for ref, rgb in zip(refs[3:7] + refs[:1], frames):
        assert np.abs(rgb.reshape(-1, 3).mean(0) - COLOURS[ref.frame]).max() < 6, ref.frame
    dataset = FootageFrames(refs, group_frames(refs, video_group=4))
    assert [len(dataset[k][0]) for k in range(len(dataset))] == [4, 4, 2]
    assert all(dataset[k][1] is None for k in range(len(dataset)))   # nothing lost
    position, image, preview = dataset[1][0][0]
    assert position == 4 and image.shape == (3, 48, 64)
    assert Image.open(__import__("io").BytesIO(preview)).size == (64, 48)


def test_groups_resume_the_same_way():
    from pipeline.data.footage import FrameRef
    refs = ([FrameRef("a.mp4", i, i, "c", "video", i) for i in range(10)]
            + [FrameRef(f"{k}.jpg", 0, None, "c", "image") for k in range(3)]
            + [FrameRef("b.mp4", i, i, "c", "video", i) for i in range(5)])
    groups = [[refs[i] for i in g] for g in group_frames(refs, video_group=4)]
    assert [len(g) for g in groups] == [4, 4, 2, 1, 1, 1, 4, 1]
    resumed = refs[8:]  # a run that stopped after two whole groups
    assert [[refs[8 + i] for i in g] for g in group_frames(resumed, video_group=4)] == groups[2:]


def test_unreadable_video_and_image_are_clear_errors(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    with pytest.raises(FootageError, match="bad.mp4"):
        plan_frames(find_sources(str(tmp_path / "bad.mp4"))[0])
    with pytest.raises(Exception, match="bad.jpg"):
        plan_frames(find_sources(str(tmp_path / "bad.jpg"))[0])


def test_preview_is_bounded():
    big = np.zeros((1000, 2000, 3), np.uint8)
    assert Image.open(__import__("io").BytesIO(preview_jpeg(big, 400))).size == (400, 200)


# ------------------------------------------------------------------------------ synthetic

def test_synthetic_footage_annotations_match_the_videos(synthetic_footage):
    from footage_helpers import TINY_VIDEO
    truth = read_footage_truth(synthetic_footage)
    params = {k: TINY_VIDEO[k] for k in ("identities", "images", "size", "cameras", "seed")}
    world = plan_world(**params)
    _, test_pids = prw_pids(len(world.train_ids), len(world.test_ids))
    assert set(truth.walker_pids) <= set(test_pids)   # only identities no model trained on
    assert sorted(truth.videos) == ["cam1.mp4", "cam2.mp4", "cam3.mp4"]
    cameras_of = {}
    w, h = TINY_VIDEO["size"]
    for name, video in truth.videos.items():
        path = str(synthetic_footage / name)
        points = sample_points(video_timeline(path), 1e-3)  # every frame
        assert [i for i, _, _ in points] == sorted(video["frames"])
        assert [t for _, _, t in points] == pytest.approx(
            [video["frames"][i]["time"] for i in sorted(video["frames"])])
        for f in video["frames"].values():
            boxes = np.asarray(f["boxes"]).reshape(-1, 4)
            assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
            assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
            for pid in f["pids"]:
                cameras_of.setdefault(pid, set()).add(video["camera"])
    assert all(len(cameras_of[p]) >= 2 for p in truth.walker_pids)  # each crosses cameras


def test_synthetic_footage_is_reproducible_and_guarded(tmp_path, synthetic_footage):
    from footage_helpers import TINY_VIDEO
    again = make_synthetic_video(tmp_path / "again", **TINY_VIDEO)
    assert (again / ANNOTATIONS).read_text() == (synthetic_footage / ANNOTATIONS).read_text()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(SyntheticWorldError, match="not empty"):
        make_synthetic_video(tmp_path / "busy", **TINY_VIDEO)
    with pytest.raises(SyntheticWorldError, match="even"):
        make_synthetic_video(tmp_path / "odd", **{**TINY_VIDEO, "size": (161, 120)})


def test_identity_lookup_by_iou(synthetic_footage):
    truth = read_footage_truth(synthetic_footage)
    name, video = next(iter(truth.videos.items()))
    frame = next(f for f in video["frames"].values() if f["pids"])
    box = np.asarray(frame["boxes"][0])
    assert truth.identity(f"/elsewhere/{name}", frame["frame"], box + 1) == frame["pids"][0]
    assert truth.identity(name, frame["frame"], [0, 0, 1, 1]) is None


def test_cli_make_synthetic_video(tmp_path):
    from click.testing import CliRunner
    from cli import cli
    out = tmp_path / "v"
    r = CliRunner().invoke(cli, ["make-synthetic", "--format", "video", "--out", str(out),
                                 "--identities", "12", "--images", "40", "--size", "96x72",
                                 "--seconds", "2", "--fps", "2", "--walkers", "2"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == str(out)
    assert json.loads((out / ANNOTATIONS).read_text())["params"]["walkers"] == 2


def test_footage_scoring_by_hand(tmp_path):
    """Walkers 7 and 9 on cameras a and b, walker 11 on camera a only, one passer-by; every
    detection sits on its annotated box, with embeddings whose answers are worked out below."""
    from footage_helpers import fake_gallery
    from pipeline.footage.scoring import best_views, score_footage, walker_detections
    from pipeline.footage.store import FrameBlock, open_gallery
    from pipeline.arrays import l2_normalize
    from pipeline.runtime.types import Detections
    e = np.eye(4)
    people = {  # (video, frame) -> [(box, pid, embedding)]
        ("a.mp4", 0): [([0, 0, 10, 20], 7, e[0]), ([20, 0, 30, 20], 9, e[1]),
                       ([40, 0, 50, 20], 11, e[3])],
        ("a.mp4", 1): [([1, 0, 11, 20], 7, e[0] + 0.1 * e[2]), ([40, 0, 50, 20], -1, e[2]),
                       ([50, 0, 60, 20], 11, e[3])],
        ("b.mp4", 0): [([5, 0, 15, 20], 9, e[0] + 0.3 * e[1]),   # 9 looks like 7 here
                       ([25, 0, 35, 20], 7, e[0] + 0.2 * e[2])],
    }
    videos = {}
    for (name, frame), ps in people.items():
        videos.setdefault(name, {"file": name, "camera": name[0], "fps": 1, "frames": []})
        videos[name]["frames"].append({"frame": frame, "time": float(frame),
                                       "boxes": [b for b, _, _ in ps],
                                       "pids": [p for _, p, _ in ps]})
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / ANNOTATIONS).write_text(json.dumps(
        {"schema": "synthetic-footage/1", "params": {}, "walker_pids": [7, 9, 11],
         "videos": list(videos.values())}))
    truth = read_footage_truth(tmp_path / "truth")
    blocks = [FrameBlock([f"/v/{name}"], np.array([frame]), np.array([float(frame)]),
                         [name[0]], np.array([64]), np.array([32]), [b""],
                         Detections(np.array([0, len(ps)]),
                                    np.array([b for b, _, _ in ps], np.float32),
                                    np.full(len(ps), 0.9, np.float32),
                                    l2_normalize(np.array([v for _, _, v in ps]))))
              for (name, frame), ps in people.items()]
    g = open_gallery(fake_gallery(tmp_path / "g", blocks, dim=4))
    assert sorted(walker_detections(g, truth).values()) == [7, 7, 7, 9, 9, 11, 11]
    score = score_footage(g, truth)
    # any camera: every walker's top hit is itself elsewhere (7: the nearest 7, 9@a -> 9@b,
    # 11 -> 11) except 9@b, which looks like 7 and finds 7@a0 (cos 0.958)
    assert (score.queries, score.top1) == (7, pytest.approx(6 / 7))
    # other cameras only: 11 is seen on one camera (no such query); 9@b still finds a 7
    assert (score.cross_camera_queries, score.cross_camera_top1) == (5, pytest.approx(4 / 5))
    views = best_views(g, truth)
    assert set(views) == {7, 9, 11} and all(iou == pytest.approx(1) for _, iou in views.values())
