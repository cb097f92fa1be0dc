"""The cache library: schema round trip, keys, atomic + resumable writing, verify, shards."""
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache import (CacheMismatchError, CacheWriter, TeacherCache, cache_file_name,
                   file_fingerprint, merge_shards, split_fingerprint)
from cache.verify import verify_cache
from cache.writer import partial_path
from pipeline.data.records import UNLABELED, ImageRecord

DIM = 8
NAMES = [f"c1s1_{i:06d}.jpg" for i in range(7)]


def _unit(rng, n):
    x = rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_entry(i: int, has_flip=True, proposals=3, jitter=2):
    """A deterministic fake teacher output for image i (n_gt varies, image 3 has none)."""
    rng = np.random.default_rng(i)
    n = 0 if i == 3 else 1 + i % 3
    gt_boxes = np.tile(np.array([[10, 20, 40, 90]], np.float32), (n, 1)) + i
    gt_pids = np.array([(i + k) % 4 + 1 if k < 2 else UNLABELED for k in range(n)], np.int64)
    p, j = proposals, jitter * n
    entry = {"gt_boxes": gt_boxes, "gt_pids": gt_pids,
             "proposal_boxes": rng.uniform(0, 50, (p, 4)).astype(np.float32),
             "jitter_boxes": np.repeat(gt_boxes, jitter, 0) + 1, "jitter_pids":
             np.repeat(gt_pids, jitter), "views": {}}
    for view in ("orig", "flip") if has_flip else ("orig",):
        entry["views"][view] = {"gt_features": _unit(rng, n),
                                "proposal_logits": rng.standard_normal((p, 2)).astype(np.float32),
                                "proposal_refined_boxes": rng.uniform(0, 50, (p, 4)).astype(np.float32),
                                "proposal_features": _unit(rng, p),
                                "jitter_features": _unit(rng, j)}
    return entry


ATTRS = dict(dataset="prw", split_fingerprint="abc", detector_fingerprint="d",
             reid_fingerprint="r", config_fingerprint="c", proposals_per_image=3, jitter_per_box=2)


def writer(path, names=NAMES, **kw):
    opts = dict(names=names, widths=[64] * len(names), heights=[128] * len(names),
                embedding_dim=DIM, attrs=ATTRS, has_flip=True, flush_every=2)
    opts.update(kw)
    return CacheWriter(path, **opts)


def build(path, names=NAMES, **kw):
    w = writer(path, names, **kw)
    for i in range(w.completed, len(names)):
        w.append(make_entry(i))
    return w.finalize()


def test_round_trip_and_identity_table(tmp_path):
    path = build(tmp_path / "c.h5")
    c = TeacherCache(path)
    assert c.meta.num_images == len(NAMES) and c.meta.has_flip and c.meta.embedding_dim == DIM
    for i in range(len(NAMES)):
        e = make_entry(i)
        for flipped, view in ((False, "orig"), (True, "flip")):
            got = c.image_targets(NAMES[i], flipped=flipped)
            np.testing.assert_array_equal(got["gt_boxes"], e["gt_boxes"])
            np.testing.assert_array_equal(got["gt_pids"], e["gt_pids"])
            np.testing.assert_array_equal(got["jitter_pids"], e["jitter_pids"])
            for k, v in e["views"][view].items():
                np.testing.assert_array_equal(got[k], v, err_msg=k)
    pids, feats, counts = c.identity_table()
    all_pids = np.concatenate([make_entry(i)["gt_pids"] for i in range(len(NAMES))])
    all_feats = np.concatenate([make_entry(i)["views"]["orig"]["gt_features"]
                                for i in range(len(NAMES))])
    for pid, feat, count in zip(pids, feats, counts):
        mean = all_feats[all_pids == pid].mean(0)
        np.testing.assert_allclose(feat, mean / np.linalg.norm(mean), atol=1e-6)
        assert count == (all_pids == pid).sum()
    assert verify_cache(path) == []


def test_float16_features(tmp_path):
    c = TeacherCache(build(tmp_path / "c.h5", float16=True))
    got = c.image_targets(1)["gt_features"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, make_entry(1)["views"]["orig"]["gt_features"], atol=1e-3)
    assert verify_cache(c.path) == []


def test_crash_leaves_no_final_file_and_resume_equals_uninterrupted(tmp_path):
    final = tmp_path / "c.h5"
    w = writer(final)
    for i in range(5):          # flush_every=2: images 0-3 flushed, image 4 buffered
        w.append(make_entry(i))
    # simulate a crash: rows of image 4 written to disk past the last whole flush
    w.file["gt/boxes"].resize(w.file["gt/boxes"].shape[0] + 1, axis=0)
    w.file.close()
    assert not final.exists() and partial_path(final).exists()
    resumed = writer(final)
    assert resumed.completed == 4
    for i in range(4, len(NAMES)):
        resumed.append(make_entry(i))
    resumed.finalize()
    assert not partial_path(final).exists()
    reference = build(tmp_path / "ref.h5")
    with h5py.File(final) as a, h5py.File(reference) as b:
        def compare(name, obj):
            if isinstance(obj, h5py.Dataset):
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
        b.visititems(compare)


def test_partial_from_other_inputs_is_discarded(tmp_path):
    final = tmp_path / "c.h5"
    w = writer(final)
    w.append(make_entry(0))
    w.append(make_entry(1))
    w.close()
    other = writer(final, attrs={**ATTRS, "detector_fingerprint": "other"})
    assert other.completed == 0


def test_unfinished_file_is_refused(tmp_path):
    w = writer(tmp_path / "c.h5")
    w.append(make_entry(0))
    w.close()
    with pytest.raises(CacheMismatchError, match="not a teacher cache"):
        TeacherCache(partial_path(tmp_path / "c.h5"))


@pytest.mark.parametrize("damage, words", [
    (lambda f: f["gt/orig/features"].__setitem__(0, np.nan), "non-finite"),
    (lambda f: f["proposals/flip/features"].__setitem__(1, np.full(DIM, 0.9)), "unit-norm"),
    (lambda f: f["jitter/offsets"].__setitem__(2, 0), "rise"),
    (lambda f: f["identities/counts"].__setitem__(0, 99), "disagree"),
])
def test_verify_catches_corruption(tmp_path, damage, words):
    path = build(tmp_path / "c.h5")
    with h5py.File(path, "a") as f:
        damage(f)
    problems = verify_cache(path)
    assert any(words in p for p in problems), problems


def _records(n=3, shift=0.0):
    return [ImageRecord(name=NAMES[i], path=Path(NAMES[i]), width=64, height=128,
                        boxes=np.array([[1, 2, 30, 60 + shift]], np.float32),
                        pids=np.array([i + 1]), camera=1) for i in range(n)]


def test_keys_and_fingerprints(tmp_path):
    assert split_fingerprint(_records()) == split_fingerprint(_records())
    assert split_fingerprint(_records()) != split_fingerprint(_records(shift=0.5))
    assert split_fingerprint(_records()) != split_fingerprint(_records(n=2))
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert file_fingerprint(a) == file_fingerprint(b)      # content, not path
    b.write_bytes(b"weightz")
    assert file_fingerprint(a) != file_fingerprint(b)
    base = cache_file_name("d", "r", "s", "c")
    assert base == cache_file_name("d", "r", "s", "c")
    assert len({base, cache_file_name("x", "r", "s", "c"), cache_file_name("d", "x", "s", "c"),
                cache_file_name("d", "r", "x", "c"), cache_file_name("d", "r", "s", "x")}) == 5
    with pytest.raises(FileNotFoundError, match="teacher checkpoint"):
        file_fingerprint(tmp_path / "missing.pt")


def test_check_compatible_and_verify_against_dataset(tmp_path):
    records = _records()
    attrs = {**ATTRS, "split_fingerprint": split_fingerprint(records)}
    path = build(tmp_path / "c.h5", names=NAMES[:3], attrs=attrs)
    c = TeacherCache(path)
    c.check_compatible(split_fingerprint(records), dataset="prw", need_flip=True,
                       need_proposals=True, need_jitter=True)
    with pytest.raises(CacheMismatchError, match="split fingerprint"):
        c.check_compatible(split_fingerprint(_records(shift=1)), dataset="prw")
    with pytest.raises(CacheMismatchError, match="cuhk-sysu"):
        c.check_compatible(split_fingerprint(records), dataset="cuhk-sysu")
    assert verify_cache(path, records, "prw") == []
    assert verify_cache(path, _records(shift=1), "prw")
    noflip = build(tmp_path / "n.h5", names=NAMES[:3], attrs=attrs, has_flip=False)
    with pytest.raises(CacheMismatchError, match="flipped"):
        TeacherCache(noflip).check_compatible(split_fingerprint(records), dataset="prw",
                                              need_flip=True)


def test_merge_shards_equals_single_build(tmp_path):
    shards = []
    for r in range(2):
        names = NAMES[r::2]
        w = writer(tmp_path / f"shard{r}.h5", names=names)
        for name in names:
            w.append(make_entry(NAMES.index(name)))
        shards.append(w.finalize())
    merged = merge_shards(tmp_path / "m.h5", shards, names=NAMES, widths=[64] * 7,
                          heights=[128] * 7, embedding_dim=DIM, attrs=ATTRS, has_flip=True)
    ref = TeacherCache(build(tmp_path / "ref.h5"))
    got = TeacherCache(merged)
    for i in range(len(NAMES)):
        for flipped in (False, True):
            a, b = got.image_targets(i, flipped), ref.image_targets(i, flipped)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(got.identity_table()[1], ref.identity_table()[1])
