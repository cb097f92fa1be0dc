"""Paired image + box transforms and the torch detection dataset."""
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.records import UNLABELED, ImageRecord
from pipeline.data.torch_dataset import DetectionDataset, collate_detection
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD, hflip_sample, normalize_image


def sample(h=20, w=30):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(3, h, w, generator=g),
            "boxes": torch.tensor([[2.0, 3.0, 10.0, 15.0], [0.0, 0.0, 30.0, 20.0]]),
            "proposal_boxes": torch.tensor([[5.0, 1.0, 7.0, 4.0]]),
            "jitter_boxes": torch.zeros(0, 4), "gt_features": torch.ones(2, 8)}


def test_hflip_hand_computed_and_twice_is_identity():
    s = sample()
    f = hflip_sample(s)
    assert torch.equal(f["boxes"], torch.tensor([[20.0, 3.0, 28.0, 15.0], [0.0, 0.0, 30.0, 20.0]]))
    assert torch.equal(f["proposal_boxes"], torch.tensor([[23.0, 1.0, 25.0, 4.0]]))
    assert f["jitter_boxes"].shape == (0, 4)
    assert torch.equal(f["image"][..., 0], s["image"][..., -1])
    assert torch.equal(f["gt_features"], s["gt_features"])  # non-box keys pass through
    back = hflip_sample(f)
    for k in s:
        assert torch.equal(back[k], s[k]), k
    assert torch.equal(s["boxes"][0], torch.tensor([2.0, 3.0, 10.0, 15.0]))  # input untouched


def test_normalize_image():
    image = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, 4, 5)
    assert torch.allclose(normalize_image(image), torch.zeros(3, 4, 5))
    one = normalize_image(torch.ones(2, 3, 2, 2))
    assert torch.allclose(one[0, :, 0, 0], (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD))
    with pytest.raises(ValueError):
        normalize_image(torch.ones(4, 2, 2))


@pytest.fixture
def records(tmp_path):
    out = []
    for i, boxes in enumerate([[[4, 5, 20, 40], [30, 2, 50, 30]], []]):
        path = tmp_path / f"im{i}.jpg"
        Image.fromarray(np.full((48, 64, 3), 40 * (i + 1), np.uint8)).save(path)
        b = np.array(boxes, np.float32).reshape(-1, 4)
        pids = np.array([7, UNLABELED][: len(b)], np.int64)
        out.append(ImageRecord(name=path.name, path=path, width=64, height=48, boxes=b, pids=pids))
    return out


class WithExtra(DetectionDataset):
    def extra_targets(self, index, flipped):
        return {"teacher_boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
                "flag": torch.tensor([float(flipped)])}


def test_dataset_items_flip_and_hook(records):
    plain = DetectionDataset(records)
    image, t = plain[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and image.max() <= 1
    assert t["boxes"].dtype == torch.float32 and torch.equal(t["boxes"], torch.from_numpy(records[0].boxes))
    assert t["pids"].tolist() == [7, UNLABELED] and t["labels"].tolist() == [1, 1]
    assert (t["name"], t["image_index"], t["flipped"], t["orig_size"]) == ("im0.jpg", 0, False, (48, 64))
    ds = WithExtra(records, flip_prob=1.0)
    image, t = ds[0]
    assert image.shape == (3, 48, 64) and t["flipped"]                 # the model resizes
    assert torch.equal(t["boxes"], torch.tensor([[44.0, 5.0, 60.0, 40.0], [14.0, 2.0, 34.0, 30.0]]))
    assert torch.equal(t["teacher_boxes"], torch.tensor([[61.0, 2.0, 63.0, 4.0]]))
    assert t["flag"].item() == 1.0


def test_flip_decisions_deterministic_per_seed_and_epoch(records):
    many = records * 20
    a, b = DetectionDataset(many, flip_prob=0.5, seed=1), DetectionDataset(many, flip_prob=0.5, seed=1)
    first = [a.is_flipped(i) for i in range(len(many))]
    assert first == [b.is_flipped(i) for i in range(len(many))] and 5 < sum(first) < 35
    a.set_epoch(1)
    assert first != [a.is_flipped(i) for i in range(len(many))]
    assert [a[i][1]["flipped"] for i in range(4)] == [a.is_flipped(i) for i in range(4)]
    assert not any(DetectionDataset(many, flip_prob=0.0).is_flipped(i) for i in range(10))


def test_zero_box_image_and_collate(records):
    ds = DetectionDataset(records, flip_prob=1.0)
    image, t = ds[1]
    assert t["boxes"].shape == (0, 4) and t["pids"].shape == (0,) and t["labels"].shape == (0,)
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == len(targets) == 2 and images[0].shape == (3, 48, 64)
    assert [x["image_index"] for x in targets] == [0, 1]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    assert targets[0]["boxes"].shape == (2, 4)


def test_dataset_on_synthetic_prw(synthetic_prw):
    from pipeline.data import read_dataset
    data = read_dataset("prw", synthetic_prw)
    image, t = DetectionDataset(data.train)[0]
    assert image.shape == (3, data.train[0].height, data.train[0].width)
    assert len(t["boxes"]) == len(data.train[0].boxes)
