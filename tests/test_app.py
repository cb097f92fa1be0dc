"""The search app's HTTP interface over a gallery (FastAPI's test client): answers, and the
4xx every kind of bad input gets -- a one-line message, never a traceback, never a file from
outside the gallery."""
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.footage.app import create_app
from pipeline.footage.store import GalleryError, open_gallery


@pytest.fixture(scope="module")
def client(footage_gallery):
    return TestClient(create_app(footage_gallery), raise_server_exceptions=False)


def png(width=40, height=80, colour=(200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def test_gallery_frames_pictures_and_search(client, footage_gallery):
    g = open_gallery(footage_gallery)
    info = client.get("/api/gallery").json()
    assert info["frames"] == g.num_frames and [c["name"] for c in info["cameras"]] == g.cameras
    assert info["cameras"][0]["timed"] and info["cameras"][0]["end"] == 5.5
    listed = client.get("/api/frames", params={"camera": "cam2", "start": 1, "end": 3}).json()
    assert listed["total"] == 5 and all(f["camera"] == "cam2" and 1 <= f["time"] <= 3
                                        for f in listed["frames"])
    frame = client.get(f"/api/frames/{listed['frames'][0]['id']}").json()
    assert frame["detections"] and len(frame["detections"][0]["box"]) == 4
    picture = client.get(f"/api/frames/{frame['id']}/image")
    assert picture.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(picture.content)).size == (160, 120)
    det = frame["detections"][0]["id"]
    assert Image.open(io.BytesIO(client.get(f"/api/detections/{det}/crop").content)).height > 0
    r = client.get("/api/search", params={"hit": det, "top": 5}).json()
    assert [h["rank"] for h in r["hits"]] == [1, 2, 3, 4, 5]
    assert all(h["frame_id"] != frame["id"] for h in r["hits"])  # not its own frame
    assert r["query"]["kind"] == "hit" and r["query"]["crop"].startswith("data:image/jpeg")
    assert {row["camera"] for row in r["timeline"]} == set(g.cameras)
    up = client.post("/api/search", files={"picture": ("me.png", png(), "image/png")},
                     data={"top": "3", "camera": "cam3"}).json()
    assert up["query"]["kind"] == "crop" and len(up["hits"]) == 3
    assert all(h["camera"] == "cam3" for h in up["hits"])
    boxed = client.post("/api/search", files={"picture": ("me.png", png(), "image/png")},
                        data={"box": "5,10,35,70"}).json()
    assert boxed["query"]["kind"] == "image" and boxed["query"]["box"] == [5, 10, 35, 70]


@pytest.mark.parametrize("method,url,kwargs,status,words", [
    ("get", "/api/frames/9999", {}, 404, "no frame 9999"),
    ("get", "/api/frames/-1/image", {}, 404, "no frame -1"),
    ("get", "/api/detections/999999/crop", {}, 404, "no detection 999999"),
    ("get", "/api/search?hit=999999", {}, 404, "no detection 999999"),
    ("get", "/api/search?hit=abc", {}, 422, "integer"),
    ("get", "/api/search?hit=0&camera=cam9", {}, 404, "no camera 'cam9'"),
    ("get", "/api/search?hit=0&start=5&end=1", {}, 400, "after its end"),
    ("get", "/api/frames?camera=nowhere", {}, 404, "no camera"),
    ("post", "/api/search", {"files": {"picture": ("x.png", b"not a picture", "image/png")}},
     400, "not a picture"),
    ("post", "/api/search", {"files": {"picture": ("x.png", png(), "image/png")},
                             "data": {"box": "0,0,41,80"}}, 400, "not inside the 40x80"),
    ("post", "/api/search", {"files": {"picture": ("x.png", png(), "image/png")},
                             "data": {"box": "1,2,three,4"}}, 400, "four numbers"),
    ("post", "/api/search", {"files": {"picture": ("x.png", png(), "image/png")},
                             "data": {"top": "0"}}, 400, "top must be"),
    ("post", "/api/search", {}, 422, "picture"),
])
def test_bad_input_gets_a_4xx_with_a_message(client, method, url, kwargs, status, words):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"]) and "Traceback" not in r.text


@pytest.mark.parametrize("path", [
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/server.py",
    "/static/..%2f..%2fserver.py", "/static/%2fetc%2fpasswd", "/api/frames/..%2f..%2fgallery.json",
    "/static/../../gallery/store.py", "/gallery.json", "/segments/",
])
def test_no_file_outside_the_app_is_served(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert "root:" not in r.text and "import" not in r.text and "schema" not in r.text


def test_the_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert client.get("/static/app.js").status_code == 200


def test_an_upload_embedded_by_another_model_is_refused(footage_gallery, tmp_path):
    import torch
    from footage_helpers import random_student
    other = random_student(tmp_path / "other.pt")
    ckpt = torch.load(other, weights_only=False)
    key = next(k for k in ckpt["model"] if k.endswith("weight"))
    ckpt["model"][key] = ckpt["model"][key] + 1
    torch.save(ckpt, other)
    client = TestClient(create_app(footage_gallery, model=str(other)),
                        raise_server_exceptions=False)
    r = client.post("/api/search", files={"picture": ("x.png", png(), "image/png")})
    assert r.status_code == 409 and "other.pt" in r.json()["detail"]
    hit = client.get("/api/search", params={"hit": 0, "top": 2})   # stored embeddings: fine
    assert hit.status_code == 200


def test_not_a_gallery_fails_at_start(tmp_path):
    with pytest.raises(GalleryError, match="not a gallery"):
        create_app(tmp_path)
