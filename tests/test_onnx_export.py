"""The student exported to ONNX and run in ONNX Runtime, against the same student in PyTorch:
same number of detections, matched boxes at IoU >= 0.99, embeddings at cosine >= 0.999, in
gallery and query mode, on synthetic frames of several sizes, at the trained and other input
sizes; plus the CLI (`export`, `evaluate --runtime onnx`)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import cli
from pipeline.data import read_dataset
from pipeline.data.images import load_image
from pipeline.distill.student import build_student
from pipeline.runtime.onnx.export import export_student
from pipeline.runtime.onnx.verify import AGREEMENT_COSINE, AGREEMENT_IOU, agreement
from pipeline.runtime.onnx.runtime import OnnxModelError, OnnxSearcher
from pipeline.errors import SettingError
from pipeline.runtime.searcher import Searcher
from pipeline.runtime.settings import apply_settings
from pipeline.runtime.types import RunSettings
from pipeline.models.two_step import TwoStepSearcher
from pipeline.models.checkpoint import save_checkpoint

from student_helpers import PIDS, tiny_model_cfg

SPREAD = 0.3  # std of the re-drawn RPN/box-predictor weights (see spread_scores)


def spread_scores(net, std=SPREAD, seed=0):
    """Random weights put every score near 0.5, where float noise between two runtimes can
    reorder near-ties at the RPN's top-k and at NMS; wider weights separate the scores as
    training does, so the comparison tests the export, not tie-breaking."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (net.rpn.head.cls_logits, net.rpn.head.bbox_pred,
                      net.roi_heads.box_predictor.cls_score, net.roi_heads.box_predictor.bbox_pred):
            for p in (layer.weight, layer.bias):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def tiny_student(**cfg):
    torch.manual_seed(0)
    return spread_scores(build_student(tiny_model_cfg(**cfg), None, PIDS)).eval()


@pytest.fixture(scope="module")
def net():
    return tiny_student()


@pytest.fixture(scope="module")
def onnx_path(net, tmp_path_factory):
    return export_student(net, tmp_path_factory.mktemp("onnx") / "student.onnx")


def frames(synthetic_prw, count=3):
    """Synthetic PRW frames (160x120) and noise frames of other sizes and aspect ratios."""
    data = read_dataset("prw", synthetic_prw)
    real = [load_image(r.path) for r in data.gallery[:count]]
    g = torch.Generator().manual_seed(1)
    return real + [torch.rand(3, h, w, generator=g) for h, w in ((190, 270), (230, 240),
                                                                  (300, 140))]


def query_boxes(image):
    h, w = image.shape[-2:]
    return torch.tensor([[0.1 * w, 0.1 * h, 0.4 * w, 0.9 * h], [0.5 * w, 0.3 * h, 0.9 * w, h],
                         [2.0, 3.0, 9.0, 20.0]])


def assert_agrees(report):
    assert report.torch_counts == report.onnx_counts
    assert sum(report.torch_counts) > 0, "nothing detected: the comparison would be empty"
    assert report.min_iou >= AGREEMENT_IOU
    assert report.min_cosine >= AGREEMENT_COSINE
    assert report.min_query_cosine >= AGREEMENT_COSINE
    assert report.max_score_diff < 1e-3


def test_gallery_and_query_modes_agree_with_pytorch(net, onnx_path, synthetic_prw):
    images = frames(synthetic_prw)
    report = agreement(net, OnnxSearcher(onnx_path), images, [query_boxes(i) for i in images])
    assert_agrees(report)


@pytest.mark.parametrize("min_size, max_size", [(64, 90), (150, 220)])
def test_input_size_override_agrees(net, onnx_path, synthetic_prw, min_size, max_size):
    searcher = OnnxSearcher(onnx_path)
    searcher.set_input_size(min_size, max_size)
    base = net.transform.min_size, net.transform.max_size
    net.transform.min_size, net.transform.max_size = (min_size,), max_size
    try:
        images = frames(synthetic_prw, count=2)
        report = agreement(net, searcher, images, [query_boxes(i) for i in images])
    finally:
        net.transform.min_size, net.transform.max_size = base
    assert_agrees(report)


def test_input_size_keeps_the_trained_proportion(onnx_path):
    searcher = OnnxSearcher(onnx_path)           # trained at 96 / 128
    searcher.set_input_size(48)
    assert (searcher.min_size, searcher.max_size) == (48.0, 64.0)
    with pytest.raises(ValueError):
        searcher.set_input_size(100, 50)


def test_outputs_follow_the_input_type(onnx_path):
    searcher = OnnxSearcher(onnx_path)
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
    as_torch = searcher.detect([image])[0]
    as_numpy = searcher.detect([image.numpy()])[0]
    assert isinstance(as_torch["boxes"], torch.Tensor)
    assert isinstance(as_numpy["embeddings"], np.ndarray)
    np.testing.assert_array_equal(as_torch["embeddings"].numpy(), as_numpy["embeddings"])
    dim = searcher.embedding_dim
    assert as_numpy["boxes"].shape[1:] == (4,) and as_numpy["embeddings"].shape[1:] == (dim,)
    norms = np.linalg.norm(as_numpy["embeddings"], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_zero_query_boxes_give_zero_embeddings_not_detections(onnx_path):
    searcher = OnnxSearcher(onnx_path)
    out = searcher.embed_boxes([np.random.rand(3, 96, 128).astype(np.float32)],
                               [np.zeros((0, 4), np.float32)])
    assert out[0].shape == (0, searcher.embedding_dim)
    with pytest.raises(ValueError, match="2 images but 1"):
        searcher.embed_boxes([np.zeros((3, 8, 8), np.float32)] * 2, [np.zeros((0, 4))])


def test_no_detections_in_both_runtimes(tmp_path):
    net = tiny_student(det_score_thresh=1.0)      # no score passes: the empty path end to end
    searcher = OnnxSearcher(export_student(net, tmp_path / "empty.onnx"))
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert len(net.detect([image])[0]["boxes"]) == 0
    out = searcher.detect([image])[0]
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)
    assert out["embeddings"].shape == (0, searcher.embedding_dim)


def test_one_file_holds_both_modes_and_one_copy_of_the_weights(net, onnx_path):
    model = onnx.load(str(onnx_path))
    assert [n.op_type for n in model.graph.node][-1] == "If"
    weights = sum(np.prod(t.dims) for t in model.graph.initializer)
    params = sum(p.numel() for p in net.parameters())
    assert weights < 1.1 * params                  # shared by the branches, not duplicated
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["model_args"])["identity_pids"] == sorted(PIDS.tolist())


def test_runtime_module_needs_no_torch():
    code = ("import sys; import pipeline.runtime.onnx.runtime; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_non_student_onnx_refused(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(OnnxModelError, match="not a student exported"):
        OnnxSearcher(tmp_path / "other.onnx")
    with pytest.raises(OnnxModelError, match="no such ONNX file"):
        OnnxSearcher(tmp_path / "missing.onnx")


# ------------------------------------------------------------------ command line

@pytest.fixture(scope="module")
def checkpoint(net, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_last.pt", net)


def test_cli_export_writes_a_verified_file(checkpoint, tmp_path):
    out = CliRunner().invoke(cli.cli, ["export", "--checkpoint", str(checkpoint), "--format",
                                       "onnx", "--out", str(tmp_path / "m.onnx")])
    assert out.exit_code == 0, out.output
    assert out.output.strip().splitlines()[-1] == str(tmp_path / "m.onnx")
    assert "matched boxes IoU" in out.output
    assert OnnxSearcher(tmp_path / "m.onnx").embedding_dim == tiny_model_cfg().embedding_dim


def test_cli_export_refuses_bad_input_in_one_line(tmp_path):
    missing = CliRunner().invoke(cli.cli, ["export", "--checkpoint", str(tmp_path / "no.pt"),
                                           "--out", str(tmp_path / "m.onnx")])
    teacher = CliRunner().invoke(cli.cli, ["export", "--checkpoint", "configs/synthetic/"
                                           "teacher.yaml", "--out", str(tmp_path / "m.onnx")])
    for out in (missing, teacher):
        assert out.exit_code != 0 and "Traceback" not in out.output
        assert out.output.strip().startswith("Error:")
    assert "only the end-to-end student" in teacher.output


def test_cli_evaluate_runtime_onnx_matches_torch(checkpoint, synthetic_prw, tmp_path):
    metrics = {}
    for runtime in ("torch", "onnx"):
        json_path = tmp_path / runtime / "metrics.json"
        out = CliRunner().invoke(cli.cli, [
            "evaluate", "--dataset", "prw", "--root", str(synthetic_prw), "--checkpoint",
            str(checkpoint), "--runtime", runtime, "--json", str(json_path),
            "--det-thresh", "0.3"])
        assert out.exit_code == 0, out.output
        metrics[runtime] = json.loads(json_path.read_text())
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    for key in ("mAP", "top1", "det_ap", "det_recall"):
        assert metrics["onnx"][key] == pytest.approx(metrics["torch"][key], abs=1e-6), key
    # the same model file evaluates as is
    out = CliRunner().invoke(cli.cli, [
        "evaluate", "--dataset", "prw", "--root", str(synthetic_prw), "--checkpoint",
        str(tmp_path / "onnx" / "model.onnx"), "--runtime", "onnx", "--json",
        str(tmp_path / "again.json"), "--det-thresh", "0.3"])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "again.json").read_text())["mAP"] == metrics["onnx"]["mAP"]


# ------------------------------------------------------------------ input size

def test_set_input_size_on_each_kind_of_searcher(net, onnx_path):
    torch_net = tiny_student()
    assert torch_net.input_size == (96.0, 128.0)
    torch_net.set_input_size(48)                            # trained 96/128: keeps 3:4
    assert torch_net.input_size == (48.0, 64.0)
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch_net.detect([image])                           # runs at the new size
        features = torch_net.transform([image])[0].tensors
    assert features.shape[-2:] == (64, 64)                  # 48x64, padded to 32
    onnx = OnnxSearcher(onnx_path)
    onnx.set_input_size(72, 100)
    assert onnx.input_size == (72.0, 100.0)

    class Detector:                                         # the teacher's detector has a
        transform = torch_net.transform                     # torchvision transform too
    two_step = TwoStepSearcher.__new__(TwoStepSearcher)
    two_step.detector = Detector()
    apply_settings(two_step, RunSettings(size=60))
    assert two_step.input_size == (60.0, 80.0)
    with pytest.raises(SettingError):
        apply_settings(two_step, RunSettings(proposals=10))
    with pytest.raises(ValueError):
        torch_net.set_input_size(0)
    assert isinstance(torch_net, Searcher) and isinstance(onnx, Searcher)


def test_evaluate_refuses_onnx_for_the_teacher_in_one_line(synthetic_prw, tmp_path):
    out = CliRunner().invoke(cli.cli, [
        "evaluate", "--dataset", "prw", "--root", str(synthetic_prw), "--teacher-config",
        "configs/synthetic/teacher.yaml", "--runtime", "onnx", "--json", str(tmp_path / "m.json")])
    assert out.exit_code != 0 and "Traceback" not in out.output
    assert "runs the student only" in out.output


def test_fewer_proposals_in_pytorch_and_in_an_exported_file(tmp_path, synthetic_prw):
    net = tiny_student()
    assert net.proposals == 20
    searcher = OnnxSearcher(export_student(net, tmp_path / "p8.onnx", proposals=8))
    assert searcher.proposals == 8 and net.proposals == 20     # the model is unchanged
    with pytest.raises(SettingError, match="export --proposals"):
        searcher.set_proposals(4)
    net.set_proposals(8)
    images = frames(synthetic_prw, count=2)
    report = agreement(net, searcher, images, [query_boxes(i) for i in images])
    assert_agrees(report)
    assert max(report.torch_counts) <= 8


def test_int8_export_runs_both_modes_close_to_float(checkpoint, synthetic_prw, tmp_path):
    frames_dir = next(Path(synthetic_prw).rglob("*.jpg")).parent
    out = CliRunner().invoke(cli.cli, ["export", "--checkpoint", str(checkpoint), "--out",
                                       str(tmp_path / "q.onnx"), "--int8", str(frames_dir)])
    assert out.exit_code == 0, out.output
    model = onnx.load(str(tmp_path / "q.onnx"))
    branches = {a.name: a.g for a in model.graph.node[-1].attribute}
    for branch in branches.values():             # both modes quantized
        assert any(n.op_type == "QuantizeLinear" for n in branch.node)
    searcher = OnnxSearcher(tmp_path / "q.onnx")
    assert searcher.metadata["precision"] == "int8"
    image = frames(synthetic_prw, count=1)[0]
    boxes = query_boxes(image)
    with torch.no_grad():
        ref = tiny_student().embed_boxes([image], [boxes])[0]
    got = searcher.embed_boxes([image], [boxes])[0]
    assert got.shape == ref.shape
    assert torch.nn.functional.cosine_similarity(ref, got).min() > 0.9
    assert searcher.detect([image])[0]["embeddings"].shape[1] == searcher.embedding_dim
