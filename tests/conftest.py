"""Shared session fixtures: tiny synthetic worlds in the real PRW and CUHK-SYSU formats."""
import pytest

TINY_PRW = dict(identities=12, images=40, size=(160, 120), cameras=3, seed=0)
TINY_CUHK = dict(identities=12, images=104, size=(96, 72), cameras=3, seed=0)  # pool of 52


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
