"""Pretrained weights through torchvision's weights API and torch hub's cache.

Each test gets its own empty hub folder (TORCH_HOME). Stand-in files with distinctive values
are put where torch hub keeps the real ones, and the tests check that those values end up in
the networks. The network is never touched: downloads fail as offline (conftest.py), or are
replaced by a copy of a stand-in where a test needs a download to succeed.
"""
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from cli import cli
from pipeline.config import from_dict, load_config
from pipeline.config.student import StudentConfig
from pipeline.config.teacher import ReidConfig, TeacherConfig
from pipeline.models.backbone import build_resnet_c4
from pipeline.models.pretrained import (COCO_DETECTOR_WEIGHTS, IMAGENET_WEIGHTS,
                                        PretrainedWeightsMissing, hub_file)
from pipeline.models.teacher_detector import TeacherDetector
from pipeline.models.teacher_reid import build_teacher_reid

ROOT = Path(__file__).resolve().parent.parent
MARK = 0.0123  # every conv1 weight of the stand-in ImageNet file


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub folder of this test's own: $TORCH_HOME/hub."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() follows TORCH_HOME again
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch" / "hub"


def stand_in_resnet18() -> dict:
    """An ImageNet-style resnet18 state dict with distinctive values."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], MARK)
    state["bn1.running_mean"] = torch.arange(64, dtype=torch.float32)
    return state


def put_in_hub(state: dict, weights=IMAGENET_WEIGHTS["resnet18"]) -> Path:
    path = hub_file(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_the_stand_in_file_in_torch_hub_is_the_one_loaded(hub):
    state = stand_in_resnet18()
    path = put_in_hub(state)
    assert path == hub / "checkpoints" / "resnet18-f37072fd.pth"
    for norm in ("frozen", "batch"):
        backbone, head = build_resnet_c4("resnet18", pretrained=True, norm=norm)
        assert torch.all(backbone.conv1.weight == MARK)
        assert torch.equal(backbone.bn1.running_mean, state["bn1.running_mean"])
        assert torch.equal(head.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    fresh, _ = build_resnet_c4("resnet18", pretrained=False)
    assert not torch.all(fresh.conv1.weight == MARK)


def test_the_teachers_start_from_the_stand_in_file(hub):
    put_in_hub(stand_in_resnet18())
    reid = build_teacher_reid(from_dict(ReidConfig, {"backbone": "resnet18", "embedding_dim": 32,
                                                     "pretrained": True}), num_classes=3)
    assert torch.all(reid.trunk[0].weight == MARK)
    detector = TeacherDetector(backbone="resnet18", pretrained=True, fpn_channels=32,
                               box_head_dim=64, min_size=64, max_size=96)
    assert torch.all(detector.backbone.body.conv1.weight == MARK)
    # a checkpoint's model_args rebuild the detector without any weights file
    shutil.rmtree(hub)
    rebuilt = TeacherDetector(**detector.model_args)
    rebuilt.load_state_dict(detector.state_dict())


def test_a_student_config_with_pretrained_true_loads_the_stand_in(hub):
    from pipeline.distill.student import build_student
    from student_helpers import tiny_model_cfg
    put_in_hub(stand_in_resnet18())
    cfg = StudentConfig()
    model = build_student(tiny_model_cfg(pretrained=True, norm="frozen"), cfg.distill,
                          torch.tensor([1, 2, 3]).numpy())
    assert torch.all(model.backbone.conv1.weight == MARK)


def test_a_missing_file_is_downloaded_into_torch_hub(hub, monkeypatch):
    source = hub.parent.parent / "elsewhere.pth"
    torch.save(stand_in_resnet18(), source)
    fetched = []

    def download(url, dst, hash_prefix=None, progress=True):
        fetched.append((url, hash_prefix))
        shutil.copyfile(source, dst)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    backbone, _ = build_resnet_c4("resnet18", pretrained=True)
    assert fetched == [(IMAGENET_WEIGHTS["resnet18"].url, "f37072fd")]  # hash checked
    assert hub_file(IMAGENET_WEIGHTS["resnet18"]).is_file()
    assert torch.all(backbone.conv1.weight == MARK)


def test_offline_without_the_file_names_file_folder_and_the_way_out(hub):
    folder = hub / "checkpoints"
    with pytest.raises(PretrainedWeightsMissing) as err:
        build_resnet_c4("resnet50", pretrained=True)
    text = str(err.value)
    assert "resnet50-0676ba61.pth" in text and f"{folder}/" in text
    assert "--set model.pretrained=false" in text and "\n" not in text
    with pytest.raises(PretrainedWeightsMissing, match="--set reid.pretrained=false"):
        build_teacher_reid(from_dict(ReidConfig, {"backbone": "resnet18", "pretrained": True}), 3)
    from pipeline.models.teacher_detector import build_teacher_detector
    cfg = from_dict(TeacherConfig, {"detector": {"backbone": "resnet18", "pretrained": True}})
    with pytest.raises(PretrainedWeightsMissing, match="--set detector.pretrained=false"):
        build_teacher_detector(cfg.detector)


def test_a_damaged_or_foreign_file_in_the_hub_is_a_clear_error(hub):
    path = put_in_hub(stand_in_resnet18())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(PretrainedWeightsMissing, match="truncated") as err:
        build_resnet_c4("resnet18", pretrained=True)
    assert "weights_only" not in str(err.value) and "delete it" in str(err.value)
    put_in_hub(torchvision.models.resnet34(weights=None).state_dict())
    with pytest.raises(PretrainedWeightsMissing, match="do not fit"):
        build_resnet_c4("resnet18", pretrained=True)


def coco_stand_in() -> dict:
    """torchvision's COCO Faster R-CNN R50-FPN layout (frozen BN: no num_batches_tracked),
    with a distinctive box head."""
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91)
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    state["roi_heads.box_head.fc6.bias"] = torch.full((1024,), MARK)
    state["backbone.fpn.layer_blocks.0.0.bias"] = torch.full((256,), -MARK)
    return state


def test_the_teacher_detector_can_start_from_coco_faster_rcnn(hub):
    put_in_hub(coco_stand_in(), COCO_DETECTOR_WEIGHTS)
    from pipeline.models.teacher_detector import build_teacher_detector
    cfg = from_dict(TeacherConfig, {"detector": {"coco": True, "min_size": 64, "max_size": 96,
                                                 "frozen_stages": 2}}).detector
    detector = build_teacher_detector(cfg)
    assert torch.all(detector.roi_heads.box_head.fc6.bias == MARK)
    assert torch.all(detector.backbone.fpn.layer_blocks[0][0].bias == -MARK)
    assert detector.roi_heads.box_predictor.cls_score.out_features == 2  # person, background
    assert not detector.backbone.body.layer1[0].conv1.weight.requires_grad
    bad = from_dict(TeacherConfig, {"detector": {"coco": True, "backbone": "resnet18"}}).detector
    with pytest.raises(ValueError, match="architecture"):
        build_teacher_detector(bad)


def test_real_configs_start_from_imagenet_and_synthetic_ones_do_not():
    real = [*ROOT.glob("configs/teacher/*.yaml"), *ROOT.glob("configs/student/*-r*-*.yaml")]
    synthetic = [p for p in ROOT.glob("configs/synthetic/*.yaml")]
    assert len(real) >= 14 and len(synthetic) >= 7
    for path in real:
        cls = TeacherConfig if "teacher" in path.parts else StudentConfig
        cfg = load_config(path, cls)
        flags = ([cfg.detector.pretrained, cfg.reid.pretrained] if cls is TeacherConfig
                 else [cfg.model.pretrained])
        assert all(flags), path
    for path in synthetic:
        cls = TeacherConfig if path.name.startswith("teacher") else StudentConfig
        cfg = load_config(path, cls)
        flags = ([cfg.detector.pretrained, cfg.detector.coco, cfg.reid.pretrained]
                 if cls is TeacherConfig else [cfg.model.pretrained])
        assert not any(flags), path


def test_cli_offline_without_weights_is_one_line(hub, synthetic_prw, tmp_path):
    result = CliRunner().invoke(cli, [
        "train-teacher", "--part", "reid", "--config", str(ROOT / "configs/synthetic/teacher.yaml"),
        "--set", f"data.root={synthetic_prw}", "--set", f"out_dir={tmp_path / 't'}",
        "--set", "reid.ids_per_batch=4", "--set", "reid.pretrained=true", "--no-progress"])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # torch hub announces the download it tries (on stderr), then the error: one line
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and result.output.rstrip().endswith(errors[0])
    assert "resnet18-f37072fd.pth" in errors[0] and "--set reid.pretrained=false" in errors[0]
    assert "Traceback" not in result.output
