"""The two public releases: where they go, their published sizes, and a check of a dataset read
from disk against those sizes.

Figures from the dataset papers (PRW: Zheng et al., CVPR 2017; CUHK-SYSU: Xiao et al.,
CVPR 2017) and the files of the public releases (``../shared/docs/datasets.md``). The PRW paper
counts 482 training identities; the released training annotations hold 483 distinct labels
(1..478, 480..483 and 932): a complete download reads as 483.
"""
from __future__ import annotations

from dataclasses import dataclass

from .records import PersonSearchData


# What a release folder holds as downloaded and unpacked (see ../shared/docs/datasets.md).
RELEASE_LAYOUT = {
    "prw": ("PRW", "frames/, annotations/, frame_train.mat, frame_test.mat, query_info.txt"),
    "cuhk-sysu": ("CUHK-SYSU", "Image/SSM/ and annotation/ (Images.mat, pool.mat, test/)"),
}


def missing_release(dataset: str, root) -> str:
    """What to do when ``root`` does not exist: where the release goes and how to check it."""
    name, layout = RELEASE_LAYOUT[dataset]
    return (f"{root} does not exist: download the {name} release and unpack it so that {root}/ "
            f"holds {layout} (or point data.root at it: --set data.root=DIR); check it with "
            f"`python cli.py inspect-dataset --dataset {dataset} --root {root} --check`. "
            f"For a synthetic world in this layout instead: `python cli.py make-synthetic "
            f"--format {dataset} --out {root}`")


@dataclass(frozen=True)
class Count:
    """One published figure: what is counted, the number, and a note where the paper differs."""

    name: str
    value: int
    note: str = ""


PUBLISHED: dict[str, tuple[Count, ...]] = {
    "prw": (
        Count("images", 11_816),
        Count("train images", 5_704),
        Count("gallery images", 6_112),
        Count("queries", 2_057),
        Count("train identities", 483, "the paper counts 482; the released training "
                                       "annotations hold 483 distinct labels"),
    ),
    "cuhk-sysu": (
        Count("images", 18_184),
        Count("train images", 11_206),
        Count("gallery images", 6_978),
        Count("queries", 2_900),
        Count("train identities", 5_532),
    ),
}

# What the reader hands on, under the names of PUBLISHED.
MEASURES = {
    "images": lambda d: len(d.train) + len(d.gallery),
    "train images": lambda d: len(d.train),
    "gallery images": lambda d: len(d.gallery),
    "queries": lambda d: len(d.queries),
    "train identities": lambda d: len(d.train_identities()),
}


@dataclass(frozen=True)
class CountCheck:
    name: str
    read: int
    published: int
    note: str

    @property
    def ok(self) -> bool:
        return self.read == self.published

    def difference(self) -> str:
        """One sentence naming the difference, e.g. "train images: read 40, published 5,704"."""
        extra = f" ({self.note})" if self.note else ""
        return (f"{self.name}: read {self.read:,}, published {self.published:,} "
                f"({self.read - self.published:+,}){extra}")


def check_published(data: PersonSearchData) -> list[CountCheck]:
    """Every published count of ``data.dataset`` beside what was read, in table order."""
    if data.dataset not in PUBLISHED:
        raise ValueError(f"no published counts for dataset {data.dataset!r}")
    return [CountCheck(c.name, int(MEASURES[c.name](data)), c.value, c.note)
            for c in PUBLISHED[data.dataset]]


def check_galleries(data: PersonSearchData) -> list[str]:
    """CUHK-SYSU protocol files: TestG{N} must give every query a gallery of N images.
    Returns one sentence per protocol file that does not."""
    problems = []
    for size, galleries in sorted(data.query_galleries.items()):
        wrong = [q for q, g in enumerate(galleries) if len(g.images) != size]
        if len(galleries) != len(data.queries):
            problems.append(f"TestG{size}: {len(galleries):,} query galleries for "
                            f"{len(data.queries):,} queries")
        if wrong:
            problems.append(f"TestG{size}: {len(wrong):,} queries have a gallery of other than "
                            f"{size} images (first: query {wrong[0]})")
    return problems


def format_checks(checks: list[CountCheck]) -> str:
    """A table: count, read, published, ok/DIFFERS."""
    rows = [("count", "read", "published", "")] + [
        (c.name, f"{c.read:,}", f"{c.published:,}", "ok" if c.ok else "DIFFERS") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                       enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_release(data: PersonSearchData) -> tuple[str, list[str]]:
    """(table of every published count beside what was read, one sentence per difference)."""
    checks = check_published(data)
    return format_checks(checks), [c.difference() for c in checks if not c.ok] + \
        check_galleries(data)
