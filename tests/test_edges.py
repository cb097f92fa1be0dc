"""Input at the edges: numbers in options, query strings and forms must be finite (a one-line
refusal or a 4xx, never a 500 and never NaN in a results file), and an upload's size is
enforced while its body streams in, before it is spooled to disk."""
import asyncio
import json
import math

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli import cli
from footage_helpers import fake_block, fake_gallery
from pipeline.footage.app import create_app
from pipeline.footage.app.server import FORM_BYTES, MAX_UPLOAD_BYTES

NOT_FINITE = ("nan", "inf", "-inf", "Infinity", "1e999")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A gallery of two timed video frames and a still image (random embeddings)."""
    base = tmp_path_factory.mktemp("edges")
    blocks = [fake_block(["/v/a.mp4"] * 2, [0, 4], times=[0.0, 2.0], cameras=["c1"] * 2),
              fake_block(["/x/x.jpg"], [0], cameras=["c2"], seed=1)]
    return fake_gallery(base / "g", blocks)


@pytest.fixture(scope="module")
def client(gallery):
    return TestClient(create_app(gallery), raise_server_exceptions=False)


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("option", ["--from", "--to"])
def test_search_refuses_a_time_that_is_not_finite(gallery, tmp_path, option, value):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["search", "--gallery", str(gallery), "--hit", "0",
                                 option, value, "--out", str(out)])
    assert r.exit_code == 2 and "not a finite number" in r.output, r.output
    assert "Traceback" not in r.output and not out.exists()


@pytest.mark.parametrize("option", ["--every", "--min-score"])
def test_index_refuses_numbers_that_are_not_finite(tmp_path, option):
    r = CliRunner().invoke(cli, ["index", "--gallery", str(tmp_path / "g"), "--model", "m.pt",
                                 str(tmp_path), option, "nan"])
    assert r.exit_code == 2 and "not a finite number" in r.output, r.output


def test_results_json_is_strict_json(gallery, tmp_path):
    r = CliRunner().invoke(cli, ["search", "--gallery", str(gallery), "--hit", "0",
                                 "--from", "0", "--to", "1e3", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    payload = strict_json((tmp_path / "results.json").read_text())
    assert payload["filters"]["start"] == 0 and payload["filters"]["end"] == 1000
    assert payload["hits"] and all(h["time"] is None or math.isfinite(h["time"])
                                   for h in payload["hits"])


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("url", ["/api/search?hit=0&{}={}", "/api/frames?{}={}"])
@pytest.mark.parametrize("name", ["start", "end"])
def test_query_strings_refuse_times_that_are_not_finite(client, url, name, value):
    r = client.get(url.format(name, value))
    assert r.status_code == 422 and "finite" in r.text, r.text
    strict_json(r.text)


@pytest.mark.parametrize("value", NOT_FINITE)
def test_upload_form_refuses_times_that_are_not_finite(client, value):
    from footage_helpers import jpeg
    r = client.post("/api/search", files={"picture": ("me.jpg", jpeg(), "image/jpeg")},
                    data={"start": value})
    assert r.status_code == 400 and "start must be a finite number" in r.json()["detail"]
    strict_json(r.text)


# ------------------------------------------------------------------------------ upload size

BOUNDARY = b"xXxBOUNDARYxXx"
CHUNK = 1 << 20


def post_streamed(app, total: int, declared: bool):
    """POST /api/search with a multipart picture of ``total`` bytes, sent in 1 MB chunks as
    the server asks for them (a client streaming a large file); returns (status, detail,
    body bytes the server pulled)."""
    head = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="picture"; '
            b'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n')
    headers = [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]
    if declared:
        headers.append((b"content-length", str(len(head) + total).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/search",
             "raw_path": b"/api/search", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    pulled, sent = [0], []

    async def receive():
        if pulled[0] == 0:
            pulled[0] = len(head)
            return {"type": "http.request", "body": head, "more_body": True}
        if pulled[0] >= total:
            return {"type": "http.disconnect"}
        pulled[0] += CHUNK
        return {"type": "http.request", "body": b"\0" * CHUNK, "more_body": True}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)["detail"], pulled[0]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_upload_over_the_limit_is_refused_before_it_is_taken_in(gallery, declared):
    total = 10 * MAX_UPLOAD_BYTES        # 200 MB, never made: chunks are sent as asked for
    status, detail, pulled = post_streamed(create_app(gallery), total, declared)
    assert status == 413 and "larger than" in detail
    limit = MAX_UPLOAD_BYTES + FORM_BYTES
    assert pulled <= (0 if declared else limit + 2 * CHUNK), pulled
