"""The local search app: FastAPI routes over one gallery folder.

Pages come from this package's ``static/`` folder; everything else is JSON or JPEG made from
the gallery's own files (stored previews, tables, the FAISS index). No route takes a file
path: frames and detections are named by their integer ids, so nothing outside the gallery
and the static folder can be served. Bad input gets a 4xx with a one-line ``detail``:
an unknown frame, detection or camera (404), an unreadable upload or a box outside the
picture (400), a time that is not a finite number (422 in a query string, 400 in a form), a
gallery made by another model than the one given (409), a too large upload (413, answered
before the body is taken in: :mod:`pipeline.footage.app.limits`), a damaged gallery file
(503, naming the file and `gallery repair`; a damaged segment stops the app at its start). Unexpected failures answer 500 with a one-line message, never a traceback.
"""
from __future__ import annotations

import base64
import math
import threading
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query as Param, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from pipeline.footage.app.limits import BodyLimit
from pipeline.footage.ranking import DEFAULT_TOP, SearchFilter
from pipeline.footage.pictures import detection_crop
from pipeline.footage.report import results_payload
from pipeline.footage.store import (DamagedGalleryError, Gallery, GalleryError, MissingItemError,
                                    ModelMismatchError, gallery_summary, open_gallery)
from pipeline.footage.query_model import QueryEmbedder
from pipeline.runtime.calibration import read_calibration
from pipeline.footage.search import (QueryError, combine_queries, parse_box, query_from_hit,
                                          query_from_picture, read_picture,
                                          run_appearance_query, run_query)

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
FORM_BYTES = 64 * 1024         # a request body may hold this much beside the picture
MAX_TOP = 500
FRAME_PAGE = 500               # most frames one /api/frames answer lists


class _GalleryHolder:
    """The open gallery, reopened when its manifest changes (an `index` run finished while
    the app was serving); the query model is loaded on the first uploaded picture."""

    def __init__(self, directory: Path, model: str | None, device: str):
        self.directory, self.model, self.device = directory, model, device
        self._lock = threading.Lock()
        self.embedding = threading.Lock()     # one query through the model at a time
        self._stamp = None
        self._gallery = self._embedder = None
        self.get()

    def get(self) -> Gallery:
        stamp = (self.directory / "gallery.json").stat().st_mtime_ns \
            if (self.directory / "gallery.json").is_file() else None
        with self._lock:
            if self._gallery is None or stamp != self._stamp:
                self._gallery = open_gallery(self.directory)
                self._stamp = stamp
                self._embedder = QueryEmbedder(self._gallery, self.model, self.device)
            return self._gallery

    @property
    def embedder(self) -> QueryEmbedder:
        self.get()
        return self._embedder


def _seconds():
    """A time in a query string: finite, else 422 (one object per parameter: FastAPI writes
    each parameter's name into its own)."""
    return Param(None, allow_inf_nan=False)


def create_app(gallery_dir, *, model: str | None = None, device: str = "cpu") -> FastAPI:
    """The app over ``gallery_dir`` (GalleryError now when it is not a gallery)."""
    holder = _GalleryHolder(Path(gallery_dir), model, device)
    app = FastAPI(title="person search", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _errors(app)
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES + FORM_BYTES)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    _browsing(app, holder)
    _searching(app, holder)
    return app


def _browsing(app: FastAPI, holder: _GalleryHolder) -> None:
    """The gallery, its frames, their pictures and the crops of their people."""

    @app.get("/api/gallery")
    def gallery_info():
        return _gallery_info(holder.get())

    @app.get("/api/frames")
    def frames(camera: str | None = None, start: float | None = _seconds(),
               end: float | None = _seconds(), offset: int = Param(0, ge=0),
               limit: int = Param(200, ge=1, le=FRAME_PAGE)):
        g = holder.get()
        SearchFilter((camera,) if camera else (), start, end).check(g)
        rows = _frames_in(g, camera, start, end)
        return {"total": len(rows), "frames": [_frame_summary(g, int(f))
                                               for f in rows[offset:offset + limit]]}

    @app.get("/api/frames/{frame_id}")
    def frame(frame_id: int):
        g = holder.get()
        _check_frame(g, frame_id)
        people = [{"id": int(d), "box": [round(float(v), 2) for v in g.boxes[d]],
                   "score": round(float(g.scores[d]), 4)} for d in g.detections_of(frame_id)]
        return {**_frame_summary(g, frame_id), "detections": people}

    @app.get("/api/frames/{frame_id}/image")
    def frame_image(frame_id: int):
        g = holder.get()
        _check_frame(g, frame_id)
        data = g.preview(frame_id)
        if not data:
            raise HTTPException(404, f"the gallery stores no picture of frame {frame_id}")
        return Response(data, media_type="image/jpeg")

    @app.get("/api/detections/{det}/crop")
    def crop(det: int):
        g = holder.get()
        _check_detection(g, det)
        return Response(detection_crop(g, det), media_type="image/jpeg")


def _searching(app: FastAPI, holder: _GalleryHolder) -> None:
    """Search from a stored detection, or from an uploaded picture (and a box in it)."""

    @app.get("/api/search")
    def search_hit(hit: list[int] = Param(...), top: int = Param(DEFAULT_TOP, ge=1, le=MAX_TOP),
                   camera: str | None = None, start: float | None = _seconds(),
                   end: float | None = _seconds()):
        g = holder.get()
        for h in hit:
            _check_detection(g, h)
        query = combine_queries([query_from_hit(g, h) for h in dict.fromkeys(hit)])
        return _results(holder, query, top, SearchFilter((camera,) if camera else (), start, end))

    @app.post("/api/search")
    async def search_upload(picture: UploadFile = File(...), box: str = Form(""),
                            top: int = Form(DEFAULT_TOP), camera: str = Form(""),
                            start: str = Form(""), end: str = Form("")):
        data = await picture.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"the picture is larger than {MAX_UPLOAD_BYTES >> 20} MB")
        if not 1 <= top <= MAX_TOP:
            raise QueryError(f"top must be between 1 and {MAX_TOP}, got {top}")
        rgb = read_picture(data, picture.filename or "uploaded picture")
        filt = SearchFilter((camera,) if camera else (), _number(start, "start"),
                            _number(end, "end"))
        g = holder.get()
        filt.check(g)
        with holder.embedding:
            query = query_from_picture(holder.embedder, rgb,
                                       parse_box(box) if box.strip() else None)
        return _results(holder, query, top, filt)


#: the HTTP status of each error a request can meet (the most specific class wins)
ERROR_STATUS = ((QueryError, 400), (ModelMismatchError, 409), (MissingItemError, 404),
                (DamagedGalleryError, 503), (GalleryError, 400))


def _json_error(status: int):
    async def handler(request: Request, e: Exception):
        return JSONResponse({"detail": str(e)}, status_code=status)
    return handler


def _errors(app: FastAPI) -> None:
    for error, status in ERROR_STATUS:
        app.add_exception_handler(error, _json_error(status))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return JSONResponse({"detail": f"internal error ({type(e).__name__}); see the server's "
                                       "log"}, status_code=500)


def _number(text: str, name: str) -> float | None:
    if not text.strip():
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise QueryError(f"{name} must be a finite number of seconds, got {text!r}")
    return number


def _check_frame(g: Gallery, frame_id: int) -> None:
    if not 0 <= frame_id < g.num_frames:
        raise HTTPException(404, f"no frame {frame_id} in the gallery ({g.num_frames} frames)")


def _check_detection(g: Gallery, det: int) -> None:
    if not 0 <= det < g.num_detections:
        raise HTTPException(404, f"no detection {det} in the gallery ({g.num_detections} "
                                 "people detected)")


def _gallery_info(g: Gallery) -> dict:
    cameras = []
    for name in g.cameras:
        rows = [i for i, c in enumerate(g.frame_camera) if c == name]
        times = g.frame_time[rows]
        timed = bool(len(times)) and not np.isnan(times).any()
        cameras.append({"name": name, "frames": len(rows), "timed": timed,
                        "start": float(times.min()) if timed else None,
                        "end": float(times.max()) if timed else None})
    return {**gallery_summary(g), "cameras": cameras}


def _frames_in(g: Gallery, camera, start, end) -> list[int]:
    """Frame ids on ``camera`` within [start, end], in time (then source, frame) order."""
    rows = [i for i, c in enumerate(g.frame_camera) if camera is None or c == camera]
    t = g.frame_time
    if start is not None:
        rows = [i for i in rows if not np.isnan(t[i]) and t[i] >= start]
    if end is not None:
        rows = [i for i in rows if not np.isnan(t[i]) and t[i] <= end]
    return sorted(rows, key=lambda i: (g.frame_camera[i], g.frame_source[i],
                                       0.0 if np.isnan(t[i]) else t[i], int(g.frame_index[i])))


def _frame_summary(g: Gallery, f: int) -> dict:
    return {"id": f, "camera": g.frame_camera[f], "time": g.frame_time_or_none(f),
            "source": g.frame_source[f], "name": Path(g.frame_source[f]).name,
            "frame": int(g.frame_index[f]), "width": int(g.frame_width[f]),
            "height": int(g.frame_height[f]),
            "people": int(g.frame_offsets[f + 1] - g.frame_offsets[f])}


def _results(holder: _GalleryHolder, query, top: int, filt: SearchFilter) -> dict:
    g = holder.get()
    hits = run_query(g, query, top, filt)
    appearances = run_appearance_query(g, query, top, filt)
    calibration, note = read_calibration(g.model, holder.model)
    payload = results_payload(g, query.to_dict(), hits, filt, appearances, calibration, note)
    for row, a in zip(payload["appearances"], appearances):   # the app draws each one's frames
        row["members"] = a.members
    payload["query"]["crop"] = ("data:image/jpeg;base64,"
                                + base64.b64encode(query.crop_jpeg).decode("ascii"))
    for h in payload["hits"]:
        h["crop"] = f"/api/detections/{h['id']}/crop"
    return payload
