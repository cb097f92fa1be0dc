"""What a search leaves behind: ``results.json``, ``results.csv`` and ``results.html``.

``results.json``: ``{"query": {...}, "hits": [{"rank", "similarity", "source", "frame",
"time", "camera", "box", "id", "score", "frame_id"}, ...], "timeline": [...], "gallery",
"model", "index", "filters", "created", "same_person"}`` (``box`` x1, y1, x2, y2 in the
frame's pixels, ``time`` seconds or null for a still image; every hit and appearance also has
``same_person``, P(same person), and ``likely``, both null when the model is not calibrated:
:mod:`pipeline.runtime.calibration`). ``results.csv`` holds one row per hit (rank,
similarity, source, frame, time, camera, box as "x1,y1,x2,y2", id, score).

``results.html`` is one self-contained file (pictures inlined as data URIs, no script, no
network): the query crop; the ranked hits as crops with similarity, camera and time, each
opening its whole frame with the box drawn (a CSS ``:target`` overlay); and per camera a
timeline of when the person was seen.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
from pathlib import Path

import numpy as np

from pipeline.files import atomic_path, write_json_atomic, write_text_atomic
from pipeline.footage.appearances import AppearanceHit
from pipeline.footage.ranking import Hit, SearchFilter
from pipeline.footage.pictures import detection_crop, detection_in_frame
from pipeline.footage.store import Gallery
from pipeline.runtime.calibration import Calibration

RESULTS_JSON, RESULTS_CSV, RESULTS_HTML = "results.json", "results.csv", "results.html"
STRIP_FRAMES = 12               # frames an appearance's strip shows
CSV_COLUMNS = ("rank", "similarity", "source", "frame", "time", "camera", "box", "id", "score")


def format_time(t: float | None) -> str:
    """Seconds as m:ss.s ("still" for an image, which has no time)."""
    if t is None:
        return "still"
    minutes, seconds = divmod(float(t), 60.0)
    return f"{int(minutes)}:{seconds:04.1f}"


def camera_timelines(gallery: Gallery, hits: list[Hit], query_frame: int | None = None) -> list[dict]:
    """Per camera: the span its frames cover, where each hit falls on it and (``query``,
    else None) where the query was taken when it is a gallery frame.

    Video frames are placed by time (seconds); a camera of still images by the frame's
    position among that camera's frames (``axis`` says which)."""
    rows = []
    for camera in gallery.cameras:
        frames = [i for i, c in enumerate(gallery.frame_camera) if c == camera]
        times = gallery.frame_time[frames]
        timed = not np.isnan(times).any()
        order = {f: k for k, f in enumerate(sorted(frames, key=lambda i: (
            gallery.frame_source[i], int(gallery.frame_index[i]))))}
        position = (lambda f: float(gallery.frame_time[f])) if timed else \
            (lambda f: float(order[f]))
        marks = [{"rank": h.rank, "at": position(h.frame_id), "similarity": h.similarity,
                  "strength": _strength(h.similarity, [x.similarity for x in hits]),
                  "id": h.id}
                 for h in hits if h.camera == camera]
        query = (position(query_frame) if query_frame is not None
                 and gallery.frame_camera[query_frame] == camera else None)
        rows.append({"camera": camera, "axis": "seconds" if timed else "frame order",
                     "query": query,
                     "start": float(np.min(times)) if timed else 0.0,
                     "end": float(np.max(times)) if timed else float(max(len(frames) - 1, 0)),
                     "frames": len(frames), "marks": marks})
    return rows


def _strength(similarity: float, sims: list[float]) -> float:
    """0 (the least similar result) .. 1 (the most): how strongly a timeline mark is drawn."""
    span = max(sims) - min(sims)
    return round((similarity - min(sims)) / span, 4) if span > 0 else 1.0


def appearance_intervals(gallery: Gallery, appearances: list[AppearanceHit]) -> dict[str, list]:
    """Per camera: each appearance as an interval on the timeline (rank, start, end,
    similarity, strength); still images have no time and are left out."""
    rows: dict[str, list] = {c: [] for c in gallery.cameras}
    sims = [a.similarity for a in appearances]
    for a in appearances:
        if a.start is not None:
            rows[a.camera].append({"rank": a.rank, "start": a.start, "end": a.end,
                                   "similarity": a.similarity,
                                   "strength": _strength(a.similarity, sims)})
    return rows


def same_person_fields(rows: list[dict], calibration: Calibration | None) -> list[dict]:
    """Each result row (a hit's or an appearance's dict) with ``same_person`` (P, or None
    when the model is not calibrated) and ``likely`` (P >= the threshold, or None)."""
    if calibration is None:
        return [{**r, "same_person": None, "likely": None} for r in rows]
    p = calibration.probability([r["similarity"] for r in rows])
    return [{**r, "same_person": round(float(q), 4), "likely": bool(q >= calibration.threshold)}
            for r, q in zip(rows, p)]


def _likely_only(marks: list[dict], likely: dict[int, bool]) -> list[dict]:
    """The timeline keeps the likely results only (all when not calibrated)."""
    return [m for m in marks if likely.get(m["rank"], True) is not False]


def results_payload(gallery: Gallery, query: dict, hits: list[Hit], filt: SearchFilter,
                    appearances: list[AppearanceHit] | None = None,
                    calibration: Calibration | None = None, note: str = "") -> dict:
    """The results as JSON; ``calibration`` (None: not calibrated, ``note`` says why) adds
    each row's ``same_person`` and ``likely``, and the timelines then show the likely ones."""
    timeline = camera_timelines(gallery, hits, query.get("frame_id"))
    hit_rows = same_person_fields([h.to_dict() for h in hits], calibration)
    for row in timeline:
        row["marks"] = _likely_only(row["marks"], {h["rank"]: h["likely"] for h in hit_rows})
    extra = {}
    if appearances is not None:
        extra["appearances"] = same_person_fields([a.to_dict() for a in appearances], calibration)
        likely = {a["rank"]: a["likely"] for a in extra["appearances"]}
        intervals = appearance_intervals(gallery, appearances)
        for row in timeline:
            row["appearances"] = _likely_only(intervals[row["camera"]], likely)
    return {"query": query, **extra, "hits": hit_rows,
            "same_person": {"calibrated": calibration is not None, "note": note,
                            **(calibration.to_dict() if calibration is not None else {})},
            "timeline": timeline, "gallery": str(gallery.directory),
            "model": gallery.model.to_dict(),
            "index": {"kind": gallery.index_kind, "approximate": gallery.approximate,
                      "rescored": gallery.rescored},
            "filters": {"cameras": list(filt.cameras), "start": filt.start, "end": filt.end},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_results(out_dir, gallery: Gallery, query: dict, query_crop: bytes,
                  hits: list[Hit], filt: SearchFilter,
                  appearances: list[AppearanceHit] | None = None,
                  calibration: Calibration | None = None, note: str = "") -> dict:
    """Write the three files into ``out_dir``; returns the payload written as JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = results_payload(gallery, query, hits, filt, appearances, calibration, note)
    write_json_atomic(out / RESULTS_JSON, payload)
    write_csv(out / RESULTS_CSV, hits)
    write_text_atomic(out / RESULTS_HTML,
                      render_html(gallery, payload, query_crop, hits, appearances or []))
    return payload


def write_csv(path: Path, hits: list[Hit]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for h in hits:
            w.writerow([h.rank, f"{h.similarity:.6f}", h.source, h.frame,
                        "" if h.time is None else f"{h.time:.3f}", h.camera,
                        ",".join(f"{v:.2f}" for v in h.box), h.id, f"{h.score:.4f}"])


# ------------------------------------------------------------------------------ HTML

def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{display:flex;gap:24px;align-items:flex-start;padding:16px 24px;background:#1f2430;color:#eee}
header img{height:160px;border:3px solid #ffd200;border-radius:4px}
header h1{margin:0 0 8px;font-size:22px} header p{margin:4px 0;font-size:14px;color:#ccd}
.badge{background:#c0392b;color:#fff;padding:2px 6px;border-radius:3px;font-size:12px}
section{padding:12px 24px} h2{font-size:17px;margin:8px 0}
.timeline{display:grid;grid-template-columns:90px 1fr;gap:6px 12px;align-items:center}
.timeline svg{width:100%;height:34px;background:#fff;border:1px solid #ddd;border-radius:3px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
a.hit{display:block;width:130px;background:#fff;border:1px solid #ddd;border-radius:4px;
 padding:6px;text-decoration:none;color:#222;font-size:12px;text-align:center}
a.hit:hover{border-color:#ffb000} a.hit img{height:160px;max-width:118px;object-fit:contain}
.sim{font-weight:600;font-size:14px} .rank{color:#888}
.frame{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:5;
 flex-direction:column;align-items:center;justify-content:center;color:#eee}
.frame:target{display:flex} .frame img{max-width:92vw;max-height:80vh}
.frame a{color:#ffd200;margin-top:10px;font-size:15px}
.strip-row{display:flex;gap:4px;flex-wrap:wrap;justify-content:center;max-width:92vw}
.strip-row img.strip{height:150px} .track code{color:#ccd;margin-top:8px}
rect.interval{cursor:pointer}
.threshold{flex-basis:100%;border-top:3px dashed #c0392b;color:#c0392b;font-size:13px;
 padding-top:2px} .p{color:#555}
"""


def render_html(gallery: Gallery, payload: dict, query_crop: bytes, hits: list[Hit],
                appearances: list[AppearanceHit] = ()) -> str:
    hit_cards, hit_frames = _hit_cards(gallery, hits, payload["hits"])
    hit_cards = _with_line(hit_cards, payload["hits"])
    sections = [f'<section><h2>When each camera saw them</h2><div class="timeline">'
                f'{"".join(_timeline_row(r) for r in payload["timeline"])}</div></section>']
    overlays = hit_frames
    if appearances:
        cards, strips = _appearance_cards(gallery, payload["gallery"], appearances,
                                          payload["appearances"])
        cards = _with_line(cards, payload["appearances"])
        sections.append(f'<section><h2>Appearances: one row per visit to a camera (click one '
                        f'for its frames)</h2><div class="grid">{cards}</div></section>')
        overlays = strips + overlays
    sections.append(f'<section><h2>Ranked detections (click one for its whole frame)</h2>'
                    f'<div class="grid">{hit_cards or "<p>no matches</p>"}</div></section>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>Person search results</title><style>{_STYLE}</style></head>'
            f'<body>{_header(gallery, payload, query_crop, len(hits))}{"".join(sections)}'
            f'{"".join(overlays)}</body></html>\n')


def _header(gallery: Gallery, payload: dict, query_crop: bytes, count: int) -> str:
    esc = html.escape
    index = payload["index"]
    approx = ' <span class="badge">approximate index</span>' if index["approximate"] else ""
    if index.get("rescored"):      # the hits it finds carry exact similarities
        approx += " (recall approximate, similarities exact: re-scored)"
    filters = payload["filters"]
    filter_text = ", ".join(
        [f"cameras {', '.join(filters['cameras'])}"] * bool(filters["cameras"])
        + [f"from {filters['start']} s"] * (filters["start"] is not None)
        + [f"until {filters['end']} s"] * (filters["end"] is not None)) or "none"
    return (f'<header><img id="query" alt="query" src="{_data_uri(query_crop)}">'
            f'<div><h1>Where else does this person appear?</h1>'
            f'<p>query: {esc(_query_text(payload["query"]))}</p>'
            f'<p>gallery: {esc(payload["gallery"])} ({gallery.num_frames} frames, '
            f'{gallery.num_detections} people detected)</p>'
            f'<p>model: {esc(payload["model"]["kind"])} {esc(payload["model"]["name"])}</p>'
            f'<p>index: {esc(index["kind"])}{approx} &middot; filters: {esc(filter_text)} '
            f'&middot; {count} hits &middot; {esc(payload["created"])}</p>'
            f'<p class="calibration">{esc(payload["same_person"]["note"])}</p></div></header>')


def _with_line(cards: list[str], rows: list[dict]) -> str:
    """The cards with the threshold line before the first one that is not likely the same
    person (after the last when all are); no line when the model is not calibrated."""
    if not rows or rows[0]["likely"] is None:
        return "".join(cards)
    cut = next((k for k, r in enumerate(rows) if not r["likely"]), len(rows))
    line = (f'<div class="threshold" data-after-rank="{cut}">&#9650; likely the same person '
            f'&middot; not likely &#9660;</div>')
    return "".join(cards[:cut]) + line + "".join(cards[cut:])


def _same_person_text(row: dict) -> str:
    return "" if row["same_person"] is None else \
        f'<br><span class="p">P same {row["same_person"]:.2f}</span>'


def _hit_cards(gallery: Gallery, hits: list[Hit], rows: list[dict]) -> tuple[list[str], list[str]]:
    esc = html.escape
    cards, frames = [], []
    for h, row in zip(hits, rows):
        cards.append(
            f'<a class="hit" id="hit-{h.rank}" href="#frame-{h.rank}" data-rank="{h.rank}" '
            f'data-id="{h.id}" data-source="{esc(h.source)}" data-frame="{h.frame}" '
            f'data-box="{",".join(f"{v:.2f}" for v in h.box)}" '
            f'data-similarity="{h.similarity:.6f}" data-camera="{esc(h.camera)}">'
            f'<img alt="hit {h.rank}" src="{_data_uri(detection_crop(gallery, h.id))}"><br>'
            f'<span class="sim">{h.similarity:.3f}</span> <span class="rank">#{h.rank}</span>'
            f'<br>{esc(h.camera)} &middot; {format_time(h.time)}{_same_person_text(row)}</a>')
        frames.append(
            f'<div class="frame" id="frame-{h.rank}"><img alt="frame of hit {h.rank}" '
            f'src="{_data_uri(detection_in_frame(gallery, h.id))}">'
            f'<div>#{h.rank} &middot; similarity {h.similarity:.3f} &middot; {esc(h.camera)} '
            f'&middot; {format_time(h.time)} &middot; {esc(Path(h.source).name)} frame '
            f'{h.frame}</div><a href="#hit-{h.rank}">close</a></div>')
    return cards, frames


def _interval_text(a: AppearanceHit) -> str:
    return f"{format_time(a.start)}&ndash;{format_time(a.end)}" if a.start is not None else "still"


def _appearance_cards(gallery: Gallery, gallery_dir: str, appearances: list[AppearanceHit],
                      rows: list[dict]) -> tuple[list[str], list[str]]:
    """Cards (best crop, camera, interval) and per appearance an overlay: a strip of its
    frames (at most :data:`STRIP_FRAMES`, evenly spread) and how to search again from it."""
    esc = html.escape
    cards, strips = [], []
    for a, row in zip(appearances, rows):
        best = a.best["hit"]
        cards.append(
            f'<a class="hit appearance" id="appearance-{a.rank}" href="#track-{a.rank}" '
            f'data-rank="{a.rank}" data-hit="{best}" data-camera="{esc(a.camera)}" '
            f'data-start="{a.start}" data-end="{a.end}" data-similarity="{a.similarity:.6f}">'
            f'<img alt="appearance {a.rank}" src="{_data_uri(detection_crop(gallery, best))}">'
            f'<br><span class="sim">{a.similarity:.3f}</span> <span class="rank">#{a.rank}</span>'
            f'<br>{esc(a.camera)} &middot; {_interval_text(a)}<br>{a.frames} frame{"s" * (a.frames != 1)}'
            f'{_same_person_text(row)}</a>')
        picks = np.unique(np.linspace(0, len(a.members) - 1, min(STRIP_FRAMES, len(a.members)))
                          .round().astype(int))
        strip = "".join(f'<img class="strip" alt="frame {k + 1} of appearance {a.rank}" '
                        f'src="{_data_uri(detection_crop(gallery, a.members[k]))}">'
                        for k in picks)
        strips.append(
            f'<div class="frame track" id="track-{a.rank}"><div class="strip-row">{strip}</div>'
            f'<div>appearance #{a.rank} &middot; similarity {a.similarity:.3f} &middot; '
            f'{esc(a.camera)} &middot; {_interval_text(a)} &middot; {a.frames} frames of '
            f'{esc(Path(a.source).name)}</div><code>python cli.py search --gallery '
            f'{esc(gallery_dir)} --hit {best}</code> (search again from it)'
            f'<a href="#appearance-{a.rank}">close</a></div>')
    return cards, strips


def _query_text(q: dict) -> str:
    if q.get("kind") == "multi":
        return f"{len(q['parts'])} pictures of one person: " + "; ".join(
            _query_text(p) for p in q["parts"])
    if q.get("kind") == "hit":
        return (f"detection {q['hit']} ({q.get('camera')}, {format_time(q.get('time'))}, "
                f"{Path(q.get('source') or '').name} frame {q.get('frame')})")
    where = q.get("image") or "uploaded picture"
    return f"{where}, box {', '.join(f'{v:.0f}' for v in q['box'])}"


def _timeline_row(row: dict) -> str:
    span = max(row["end"] - row["start"], 1e-9)
    x = lambda at: 2 + 96 * (at - row["start"]) / span  # noqa: E731  percent, 2% margins
    marks = (_interval_marks(row, x) if "appearances" in row else _hit_marks(row, x))
    if row["query"] is not None:  # drawn first: the hits stay on top
        qx = x(row["query"])
        marks = (f'<line class="query-mark" x1="{qx:.2f}%" x2="{qx:.2f}%" y1="3" y2="31" '
                 f'stroke="#ffb000" stroke-width="4"><title>the query, at '
                 f'{_at_text(row, row["query"])}</title></line>') + marks
    label = (f'{html.escape(row["camera"])}<br><small>{_at_text(row, row["start"])}&ndash;'
             f'{_at_text(row, row["end"])}</small>')
    return (f'<div>{label}</div><svg data-camera="{html.escape(row["camera"])}">'
            f'<line x1="2%" y1="17" x2="98%" y2="17" stroke="#bbb" stroke-width="4"/>'
            f'{marks}</svg>')


def _interval_marks(row: dict, x) -> str:
    """An appearance search: each appearance as a bar from its start to its end."""
    return "".join(
        f'<a href="#track-{m["rank"]}"><rect class="interval" x="{x(m["start"]):.2f}%" y="8" '
        f'width="{max(x(m["end"]) - x(m["start"]), 0.6):.2f}%" height="18" rx="3" '
        f'fill="{_colour(m["strength"])}" fill-opacity="{0.25 + 0.75 * m["strength"]:.2f}" '
        f'data-rank="{m["rank"]}"><title>appearance #{m["rank"]} similarity '
        f'{m["similarity"]:.3f}, {format_time(m["start"])} to {format_time(m["end"])}</title>'
        f'</rect></a>' for m in sorted(row["appearances"], key=lambda m: -m["rank"]))


def _hit_marks(row: dict, x) -> str:
    """A detection search: each hit as a dot."""
    return "".join(
        f'<a href="#frame-{m["rank"]}"><circle class="mark" cx="{x(m["at"]):.2f}%" cy="17" '
        f'r="{7 if m["rank"] == 1 else 5}" fill="{_colour(m["strength"])}" '
        f'fill-opacity="{0.35 + 0.65 * m["strength"]:.2f}" data-rank="{m["rank"]}"><title>'
        f'#{m["rank"]} similarity {m["similarity"]:.3f} at {_at_text(row, m["at"])}</title>'
        f'</circle></a>' for m in sorted(row["marks"], key=lambda m: -m["rank"]))


def _at_text(row: dict, at: float) -> str:
    return format_time(at) if row["axis"] == "seconds" else f"#{int(at)}"


def _colour(strength: float) -> str:
    """Red (the least similar hit) to green (the most similar)."""
    return f"hsl({int(120 * float(np.clip(strength, 0.0, 1.0)))},70%,42%)"
