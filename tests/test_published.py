"""`inspect-dataset --check`: a dataset as read against the published counts of its release."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from pipeline.data.published import PUBLISHED, check_galleries, check_published
from pipeline.data.records import UNLABELED, ImageRecord, PersonSearchData, QueryGallery, \
    QueryRecord

BOX = np.array([[0, 0, 10, 20]], np.float32)


def fake_release(dataset: str, *, train: int, gallery: int, queries: int, identities: int,
                 gallery_sizes=()) -> PersonSearchData:
    """Records in the counts given (one box per image; identities spread over the train split)."""
    def record(i, pid):
        return ImageRecord(f"{i}.jpg", Path(f"{i}.jpg"), 64, 48, BOX, np.array([pid]), None)
    pids = [1 + (i % identities) if i < identities * 2 else UNLABELED for i in range(train)]
    data = PersonSearchData(
        dataset=dataset, root=Path("release"),
        train=[record(i, p) for i, p in enumerate(pids)],
        gallery=[record(10 ** 6 + i, UNLABELED) for i in range(gallery)],
        queries=[QueryRecord(f"{10 ** 6}.jpg", BOX[0], q + 1) for q in range(queries)])
    for n in gallery_sizes:
        data.query_galleries[n] = [QueryGallery(tuple(f"{i}.jpg" for i in range(n)),
                                                np.full((n, 4), np.nan, np.float32))
                                   for _ in range(queries)]
    return data


COMPLETE = {
    "prw": dict(train=5704, gallery=6112, queries=2057, identities=483),
    "cuhk-sysu": dict(train=11206, gallery=6978, queries=2900, identities=5532,
                      gallery_sizes=(50, 100)),
}


@pytest.mark.parametrize("dataset", ["prw", "cuhk-sysu"])
def test_the_complete_release_matches_every_published_count(dataset):
    data = fake_release(dataset, **COMPLETE[dataset])
    checks = check_published(data)
    assert [c.name for c in checks] == [c.name for c in PUBLISHED[dataset]]
    assert all(c.ok for c in checks), [c.difference() for c in checks if not c.ok]
    assert check_galleries(data) == []
    total = {c.name: c.read for c in checks}["images"]
    assert total == {"prw": 11816, "cuhk-sysu": 18184}[dataset]


def test_each_difference_is_named_with_both_numbers():
    data = fake_release("prw", **{**COMPLETE["prw"], "gallery": 6111, "identities": 482})
    differences = [c.difference() for c in check_published(data) if not c.ok]
    assert len(differences) == 3
    assert differences[0].startswith("images: read 11,815, published 11,816 (-1)")
    assert differences[1].startswith("gallery images: read 6,111, published 6,112 (-1)")
    assert differences[2].startswith("train identities: read 482, published 483 (-1)")
    assert "the paper counts 482" in differences[2]


def test_a_short_protocol_gallery_is_named():
    data = fake_release("cuhk-sysu", **COMPLETE["cuhk-sysu"])
    data.query_galleries[100][7] = QueryGallery(("a.jpg",) * 99, np.zeros((99, 4), np.float32))
    data.query_galleries[50].pop()
    problems = check_galleries(data)
    assert problems == ["TestG50: 2,899 query galleries for 2,900 queries",
                        "TestG100: 1 queries have a gallery of other than 100 images "
                        "(first: query 7)"]


@pytest.mark.parametrize("fixture, dataset", [("synthetic_prw", "prw"),
                                              ("synthetic_cuhk", "cuhk-sysu")])
def test_cli_check_names_every_difference_and_fails(request, fixture, dataset):
    root = request.getfixturevalue(fixture)
    result = CliRunner().invoke(cli, ["inspect-dataset", "--dataset", dataset, "--root",
                                      str(root), "--check"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    differs = [line for line in result.output.splitlines() if line.startswith("differs: ")]
    assert [d.split(":")[1].strip() for d in differs] == [c.name for c in PUBLISHED[dataset]]
    assert result.output.rstrip().splitlines()[-1].startswith(f"Error: {root} differs")
    assert "synthetic world" in result.output and "Traceback" not in result.output


def test_cli_check_passes_on_the_complete_release(monkeypatch):
    import cli as cli_module
    data = fake_release("prw", **COMPLETE["prw"])
    monkeypatch.setattr(cli_module, "read_dataset", lambda name, root: data)
    result = CliRunner().invoke(cli, ["inspect-dataset", "--dataset", "prw", "--root", "PRW",
                                      "--check"])
    assert result.exit_code == 0, result.output
    assert "DIFFERS" not in result.output and "differs" not in result.output
    assert result.output.rstrip().endswith("ok: PRW holds the complete prw release")
