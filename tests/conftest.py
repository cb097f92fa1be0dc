"""Shared session fixtures: tiny synthetic worlds in the real PRW and CUHK-SYSU formats, and
footage of the tiny PRW world's people; under pytest-xdist (`make test`: two workers), each
worker's share of the cores and the slowest files first."""
import os

import pytest

# Started first, on separate workers, so that neither is left running alone at the end: the
# suite's wall time is then about the sum of the rest split over the workers (the order of the
# other files is pytest's own).
SLOW_FILES_FIRST = ("test_fullsize.py", "test_browser.py", "test_ablation.py", "test_index.py")

TINY_PRW = dict(identities=12, images=40, size=(160, 120), cameras=3, seed=0)
TINY_CUHK = dict(identities=12, images=104, size=(96, 72), cameras=3, seed=0)  # pool of 52


def pytest_configure(config):
    """An xdist worker gets its share of the cores (torch's threads, and OMP_NUM_THREADS for
    the commands the tests start), so that two workers do not oversubscribe two cores."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        from pipeline.cores import thread_share
        threads = thread_share(int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """The files of SLOW_FILES_FIRST first, in that order (xdist hands files out in this
    order with --no-loadscope-reorder); the rest keep pytest's order."""
    def rank(item):
        name = item.path.name
        return SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)
    items.sort(key=rank)    # stable: each file's tests keep their order


@pytest.fixture(scope="session")
def synthetic_prw(tmp_path_factory):
    """Root of a tiny synthetic PRW-format dataset (12 identities, 40 frames of 160x120)."""
    from pipeline.data.synthetic import make_synthetic
    return make_synthetic("prw", tmp_path_factory.mktemp("synthetic") / "prw", **TINY_PRW)


@pytest.fixture(scope="session")
def synthetic_cuhk(tmp_path_factory):
    """Root of a tiny synthetic CUHK-SYSU-format dataset (104 images of 96x72, pool of 52,
    TestG50 only)."""
    from pipeline.data.synthetic import make_synthetic
    return make_synthetic("cuhk-sysu", tmp_path_factory.mktemp("synthetic") / "cuhk",
                          **TINY_CUHK)


@pytest.fixture(autouse=True)
def no_network_downloads(monkeypatch):
    """Tests never download: torch hub's download fails as it does on a machine offline."""
    import urllib.error

    import torch.hub

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"[Errno -3] Temporary failure in name resolution ({url})")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.fixture(scope="session")
def synthetic_footage(tmp_path_factory):
    """Folder of tiny synthetic videos (3 cameras, 6 s at 2 fps, 160x120) of the tiny PRW
    world's test identities, with annotations.json."""
    from footage_helpers import TINY_VIDEO
    from pipeline.data.synthetic.video import make_synthetic_video
    return make_synthetic_video(tmp_path_factory.mktemp("footage") / "videos", **TINY_VIDEO)


@pytest.fixture(scope="session")
def random_student_checkpoint(tmp_path_factory):
    """A tiny student with random weights (keeps every detection): deterministic outputs."""
    from footage_helpers import random_student
    return random_student(tmp_path_factory.mktemp("random-student") / "student.pt")


@pytest.fixture(scope="session")
def footage_gallery(tmp_path_factory, synthetic_footage, random_student_checkpoint):
    """`cli.py index` of the tiny footage with the random student (treat as read-only);
    index-output.txt beside it holds what the command printed."""
    from click.testing import CliRunner
    from cli import cli
    from footage_helpers import index_args
    gallery = tmp_path_factory.mktemp("footage-gallery") / "gallery"
    r = CliRunner().invoke(cli, index_args(gallery, random_student_checkpoint,
                                           synthetic_footage))
    assert r.exit_code == 0, r.output
    (gallery.parent / "index-output.txt").write_text(r.output)
    return gallery


@pytest.fixture(scope="session")
def footage_teacher(tmp_path_factory):
    """YAML config of a small trained two-step teacher (footage_helpers.trained_teacher)."""
    from footage_helpers import trained_teacher
    return trained_teacher(tmp_path_factory.mktemp("footage-teacher"))


@pytest.fixture(scope="session")
def teacher_footage(tmp_path_factory):
    """Videos of the footage teacher's world: its test identities, with annotations.json."""
    from footage_helpers import TEACHER_FOOTAGE
    from pipeline.data.synthetic.video import make_synthetic_video
    return make_synthetic_video(tmp_path_factory.mktemp("teacher-footage") / "videos",
                                **TEACHER_FOOTAGE)


@pytest.fixture(scope="session")
def teacher_gallery(tmp_path_factory, footage_teacher, teacher_footage):
    """`cli.py index` of that footage with the trained teacher (treat as read-only)."""
    from click.testing import CliRunner
    from cli import cli
    gallery = tmp_path_factory.mktemp("teacher-gallery") / "gallery"
    r = CliRunner().invoke(cli, ["index", "--gallery", str(gallery), "--model",
                                 str(footage_teacher), str(teacher_footage), "--every", "0.5",
                                 "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    return gallery
