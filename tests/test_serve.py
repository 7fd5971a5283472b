"""keras_vitbn.serve: the JSON API with good and bad inputs, batching, the page in a real browser, a load test."""

import asyncio
import base64
import http.client
import io
import json
import os
import sys
import urllib.parse

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vitbn
from keras_vitbn.serve import create_app, serve_in_thread
from keras_vitbn.serve.app import Batcher, main
from keras_vitbn.serve.loadtest import main as loadtest_main
from keras_vitbn.serve.loadtest import run_load, server_process
from keras_vitbn.tools.predict import softmax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import Chromium, find_chromium  # noqa: E402

LIMITS = {"max_request_bytes": 300_000, "max_image_bytes": 200_000, "max_image_side": 512, "max_images": 5}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    model = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16)
    path = str(out / "model_best.keras")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def server(model_path):
    app = create_app(model_path, max_batch=4, limits=LIMITS)
    with serve_in_thread(app) as url:
        yield url, app.state.predictor


def request(url, method="GET", path="/", body=None, content_type="application/json"):
    """(status, parsed JSON or text) of one HTTP request."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    connection.request(method, path, body, {"Content-Type": content_type} if body is not None else {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.getheader("content-type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data.decode()


def png_b64(array, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def decode_data_url(url):
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def expected_probabilities(predictor, pixels):
    x = np.asarray(pixels, np.float32).reshape(-1, *predictor.input_shape)
    return softmax(np.asarray(keras.ops.convert_to_numpy(predictor.model(x, training=False)), np.float64))


def test_health_and_page(server):
    url, _ = server
    status, info = request(url, path="/health")
    assert status == 200 and info["status"] == "ok"
    assert info["backend"] == keras.backend.backend()
    assert info["input_shape"] == [28, 28, 1] and info["classes"] == [str(i) for i in range(10)]
    status, page = request(url, path="/")
    assert status == 200 and "<canvas" in page and "predict" in page


def test_pixels_give_the_models_probabilities(server):
    url, predictor = server
    pixels = np.random.default_rng(1).random((28, 28)).round(3)
    status, answer = request(url, "POST", "/predict", {"pixels": pixels.tolist(), "top": 10})
    assert status == 200, answer
    want = expected_probabilities(predictor, pixels)[0]
    got = {t["class"]: t["probability"] for t in answer["top"]}
    assert len(got) == 10 and [t["label"] for t in answer["top"]] == [str(t["class"]) for t in answer["top"]]
    np.testing.assert_allclose([got[k] for k in range(10)], want, atol=2e-5)
    assert [t["class"] for t in answer["top"]] == list(np.argsort(-want))
    seen = decode_data_url(answer["input"])
    assert seen.shape == (28, 28)
    np.testing.assert_allclose(seen / 255.0, pixels, atol=0.5 / 255 + 1e-6)


def test_png_jpeg_data_url_and_raw_body(server):
    url, predictor = server
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255
    status, one = request(url, "POST", "/predict", {"image": png_b64(digit)})
    assert status == 200 and len(one["top"]) == 3 and one["notes"] == []
    probabilities = [t["probability"] for t in one["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    np.testing.assert_allclose(
        one["top"][0]["probability"], expected_probabilities(predictor, digit / 255.0).max(), atol=2e-5
    )

    status, data_url = request(url, "POST", "/predict", {"image": "data:image/png;base64," + png_b64(digit)})
    assert status == 200 and data_url["top"] == one["top"]
    status, raw = request(url, "POST", "/predict?top=2", base64.b64decode(png_b64(digit)), "image/png")
    assert status == 200 and raw["top"] == one["top"][:2]

    photo = np.full((84, 112, 3), 250, np.uint8)  # dark ink on white, colour, another size
    photo[10:74, 50:60] = 0
    status, jpeg = request(url, "POST", "/predict", {"image": png_b64(photo, "JPEG")})
    assert status == 200
    assert "converted RGB to grey" in jpeg["notes"] and "resized 112x84 to 28x28" in jpeg["notes"]
    assert any(note.startswith("inverted") for note in jpeg["notes"])
    seen = decode_data_url(jpeg["input"])
    assert seen[14, 14] > 200 and seen[14, 2] < 30  # the stroke is light on black, as in MNIST


def test_batch_equals_single_requests(server):
    url, _ = server
    rng = np.random.default_rng(2)
    pixels = rng.random((28, 28)).round(3).tolist()
    png = png_b64(rng.integers(0, 255, (28, 28), dtype=np.uint8))
    status, batch = request(url, "POST", "/predict", {"images": [png, {"image": png}, {"pixels": pixels}]})
    assert status == 200 and len(batch["results"]) == 3
    _, single_png = request(url, "POST", "/predict", {"image": png})
    _, single_pixels = request(url, "POST", "/predict", {"pixels": pixels})
    for got, want in zip(batch["results"], [single_png, single_png, single_pixels]):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
        np.testing.assert_allclose(
            [t["probability"] for t in got["top"]], [t["probability"] for t in want["top"]], atol=2e-5
        )


def _wide_png():
    return png_b64(np.zeros((2, 600), np.uint8))  # a few hundred bytes, 600 pixels wide


def _tiff():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="TIFF")
    return base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = [
    ("not json", b"{nope", "application/json", 400, "not valid JSON"),
    ("json array", [1, 2], "application/json", 400, "JSON object"),
    ("wrong field", {"img": "x"}, "application/json", 400, "unknown field 'img'"),
    ("no field", {"top": 3}, "application/json", 400, "exactly one of"),
    ("two fields", {"image": "x", "pixels": [[0]]}, "application/json", 400, "exactly one of"),
    ("not base64", {"image": "%%%"}, "application/json", 400, "not valid base64"),
    (
        "not an image",
        {"image": base64.b64encode(b"hello, not a picture").decode()},
        "application/json",
        400,
        "not an image",
    ),
    ("image not a string", {"image": 7}, "application/json", 400, "base64 string"),
    ("truncated png", {"image": png_b64(np.zeros((28, 28), np.uint8))[:60]}, "application/json", 400, "image"),
    ("tiff", {"image": _tiff()}, "application/json", 415, "TIFF"),
    ("too wide", {"image": _wide_png()}, "application/json", 413, "600x2 pixels; the limit is 512"),
    ("pixels shape", {"pixels": [[0.5] * 27] * 28}, "application/json", 400, "shape [28, 27]"),
    ("pixels ragged", {"pixels": [[0.5] * 28] * 27 + [[0.5]]}, "application/json", 400, "ragged"),
    ("pixels 0-255", {"pixels": [[255] * 28] * 28}, "application/json", 400, "outside [0, 1]"),
    ("pixels text", {"pixels": [["a"] * 28] * 28}, "application/json", 400, "not all numbers"),
    ("top zero", {"pixels": [[0] * 28] * 28, "top": 0}, "application/json", 400, "between 1 and 10"),
    ("top text", {"pixels": [[0] * 28] * 28, "top": "many"}, "application/json", 400, "whole number"),
    ("invert", {"pixels": [[0] * 28] * 28, "invert": "sometimes"}, "application/json", 400, "invert must be"),
    ("empty batch", {"images": []}, "application/json", 400, "non-empty list"),
    ("batch too large", {"images": [{"pixels": [[0] * 28] * 28}] * 6}, "application/json", 413, "the limit is 5"),
    ("batch item", {"images": [{"pixels": [[0] * 28] * 28}, {"picture": 1}]}, "application/json", 400, "images[1]"),
    ("request too large", {"image": "A" * 400_000}, "application/json", 413, "the limit is 300000 bytes"),
    ("raw not image", b"plain text", "image/png", 400, "not an image"),
    ("text/plain", b"hello", "text/plain", 415, "Content-Type text/plain"),
]


@pytest.mark.parametrize(
    "body,content_type,status,message", [r[1:] for r in BAD_REQUESTS], ids=[r[0] for r in BAD_REQUESTS]
)
def test_bad_requests_get_one_line_json_errors(server, body, content_type, status, message):
    url, _ = server
    got_status, answer = request(url, "POST", "/predict", body, content_type)
    assert got_status == status, answer
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    assert message in answer["error"] and "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_unknown_paths_and_methods_answer_json(server):
    url, _ = server
    status, answer = request(url, path="/nowhere")
    assert status == 404 and "POST /predict" in answer["error"]
    status, answer = request(url, path="/predict")
    assert status == 405 and "GET is not allowed" in answer["error"]


def test_concurrent_requests_share_forward_passes(server):
    _, predictor = server
    rng = np.random.default_rng(3)
    inputs = [rng.random((1, 28, 28, 1), dtype=np.float32) for _ in range(10)]

    async def submit_all():
        batcher = Batcher(predictor)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher(x) for x in inputs))
        finally:
            await batcher.stop()

    before = predictor.forward_passes
    results = asyncio.run(submit_all())
    # All ten queue before the batcher wakes: batches of max_batch=4, 4 and 2.
    assert predictor.forward_passes - before == 3
    for x, probabilities in zip(inputs, results):
        np.testing.assert_allclose(probabilities, expected_probabilities(predictor, x), atol=2e-5)


def test_load_200_requests_from_8_clients(server, tmp_path, capsys):
    url, _ = server
    figures = run_load(url, requests=200, clients=8)
    assert figures["errors"] == 0, figures["first_errors"]
    assert figures["forward_passes"] < 200  # concurrent requests were batched
    out = tmp_path / "serve_load.csv"
    assert loadtest_main(["--url", url, "--requests", "16", "--clients", "8", "--out", str(out)]) == 0
    assert "0 errors" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("date,time_utc,cpu,")


def test_command_line_refuses_remote_bind_and_bad_models(model_path, tmp_path, capsys):
    assert main([model_path, "--host", "0.0.0.0"]) == 2
    assert "refusing to bind 0.0.0.0" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.keras")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: model file {tmp_path / 'missing.keras'} does not exist"


def test_command_line_serves(model_path):
    """`python -m keras_vitbn.serve MODEL --port 0` in its own process, as a user starts it."""
    with server_process(model_path, ["--max-batch", "1", "--class-names", "fashion_mnist"]) as url:
        assert url.startswith("http://127.0.0.1:")
        status, info = request(url, path="/health")
        assert status == 200 and info["backend"] == keras.backend.backend() and info["max_batch"] == 1
        assert info["classes"][:2] == ["T-shirt/top", "Trouser"] and len(info["classes"]) == 10
        status, answer = request(url, "POST", "/predict", {"pixels": [[0.0] * 28] * 28})
        assert status == 200 and len(answer["top"]) == 3 and answer["top"][0]["label"] in info["classes"]


def test_page_in_headless_chromium(server, tmp_path):
    """Draws a stroke on the canvas with real mouse events and reads the prediction off the page."""
    chromium = find_chromium()
    if chromium is None:
        missing = "no chromium on PATH (apt-get install chromium) or in $CHROMIUM"
        if os.environ.get("KERAS_VITBN_REQUIRE_BROWSER"):  # CI: .ci/run installs it, so this must run
            pytest.fail(missing)
        pytest.skip(missing)
    url, predictor = server
    with Chromium(chromium) as browser:
        page = browser.open(url + "/")
        page.wait_for("document.getElementById('model').textContent.includes('backend')")
        assert keras.backend.backend() in page.evaluate("document.getElementById('model').textContent")
        box = json.loads(page.evaluate("JSON.stringify(document.getElementById('pad').getBoundingClientRect())"))
        x = box["x"] + box["width"] / 2
        page.drag([(x, box["y"] + box["height"] * (0.15 + 0.035 * i)) for i in range(21)])  # a vertical "1"
        page.wait_for("document.querySelectorAll('#top tr.prediction').length === 3")
        rows = page.evaluate(
            "[...document.querySelectorAll('#top tr.prediction')].map(r => [r.dataset.label, "
            "Number(r.dataset.probability), r.querySelector('.probability').textContent])"
        )
        screenshot = page.screenshot(str(tmp_path / "page.png"))

        # The page shows the 28x28 input the model saw: the stroke, centred, light on black.
        seen = decode_data_url(page.evaluate("document.getElementById('seen').src")) / 255.0
        assert seen.shape == (28, 28) and seen[:, 11:17].mean() > 0.2 and seen[:, :8].max() < 0.1
        want = expected_probabilities(predictor, seen)[0]
        assert [label for label, _, _ in rows] == [str(k) for k in np.argsort(-want)[:3]]
        for (_, probability, text), k in zip(rows, np.argsort(-want)[:3]):
            assert abs(probability - want[k]) < 1e-3 and text == f"{100 * probability:.1f}%"

        # A chosen file goes through the same API; the page says what was converted.
        photo = tmp_path / "photo.png"
        Image.fromarray(np.full((56, 56, 3), 255, np.uint8)).save(photo)
        document = page.send("DOM.getDocument")["root"]["nodeId"]
        node = page.send("DOM.querySelector", {"nodeId": document, "selector": "#file"})["nodeId"]
        page.send("DOM.setFileInputFiles", {"files": [str(photo)], "nodeId": node})
        page.wait_for("document.getElementById('notes').textContent.includes('to 28x28')")
        assert page.evaluate("document.getElementById('error').textContent") == ""
    assert os.path.getsize(screenshot) > 5000
