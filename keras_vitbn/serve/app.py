"""The server: a Starlette app around one loaded model, and its command line.

The model is loaded once, by `create_app`, and every forward pass runs on one
worker thread: requests that arrive while a batch is running are stacked into
the next batch (up to `max_batch` images), so concurrent clients share forward
passes and no backend ever sees two threads in one model. Batches are padded
to a power of two, so the compiled backends (JAX, TensorFlow) trace at most
log2(max_batch) + 1 shapes, all during warm-up.
"""

import argparse
import asyncio
import base64
import binascii
import contextlib
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_vitbn.tools.predict import (
    CLASS_NAMES,
    InputError,
    class_names_for,
    input_spec,
    load_image,
    load_model,
    softmax,
)

DEFAULT_LIMITS = {
    "max_request_bytes": 8 * 1024 * 1024,  # the whole request body, checked before it is read
    "max_image_bytes": 4 * 1024 * 1024,  # one decoded (not base64) image file
    "max_image_side": 2048,  # pixels per side, read from the image header before decoding
    "max_images": 64,  # images in one request
}
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
REQUEST_FIELDS = ("image", "pixels", "images", "top", "invert")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


class ApiError(Exception):
    """A bad request: answered as {"error": message} with an HTTP status, never a traceback."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _require_serving():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise InputError(
            f"keras_vitbn.serve needs Starlette and uvicorn ({error.name} is missing): pip install 'keras_vitbn[serve]'"
        ) from None


def _png_data_url(array):
    """A (h, w, c) float array in [0, 1] as a data:image/png;base64 URL."""
    from PIL import Image

    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Predictor:
    """One loaded model: preprocessing, bucketed batches on one thread, top-k answers.

    Args:
        model_path: str. A .keras file written by keras_vitbn.
        class_names: list of str or None. Defaults to the run's config.json
            dataset next to the model, else class indices.
        max_batch: int. The most images in one forward pass. Defaults to 32.
        warmup: bool. Compile every batch shape now, not on the first
            requests. Defaults to True.
        limits: dict or None. Overrides of `DEFAULT_LIMITS`.
    """

    def __init__(self, model_path, class_names=None, max_batch=32, warmup=True, limits=None):
        if max_batch < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}")
        unknown = set(limits or {}) - set(DEFAULT_LIMITS)
        if unknown:
            raise InputError(f"unknown limits {sorted(unknown)}; known: {sorted(DEFAULT_LIMITS)}")
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.model_path = model_path
        self.model = load_model(model_path)
        self.input_shape = input_spec(self.model)
        self.num_classes = int(self.model.outputs[0].shape[-1])
        self.class_names = list(class_names) if class_names else class_names_for(model_path, self.num_classes)
        if len(self.class_names) != self.num_classes:
            raise InputError(f"{len(self.class_names)} class names for a model with {self.num_classes} classes")
        self.max_batch = max_batch
        self.buckets = sorted({min(2**k, max_batch) for k in range(max_batch.bit_length() + 1)})
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="keras-vitbn-predict")
        self.forward_passes = 0
        if warmup:
            for size in self.buckets:
                self.executor.submit(self._forward, np.zeros((size, *self.input_shape), np.float32)).result()
        self.forward_passes = 0

    def info(self):
        import keras

        return {
            "status": "ok",
            "model": os.path.basename(self.model_path),
            "architecture": type(self.model).__name__,
            "backend": keras.backend.backend(),
            "input_shape": list(self.input_shape),
            "classes": self.class_names,
            "max_batch": self.max_batch,
            "forward_passes": self.forward_passes,
            "limits": self.limits,
        }

    def _forward(self, x):
        """Class probabilities of a (n, h, w, c) batch; runs on the worker thread only."""
        import keras

        out = []
        for start in range(0, len(x), self.max_batch):
            chunk = x[start : start + self.max_batch]
            size = next(b for b in self.buckets if b >= len(chunk))
            padded = np.zeros((size, *chunk.shape[1:]), np.float32)
            padded[: len(chunk)] = chunk  # zeros pad: inference-mode BatchNorm does not mix images
            logits = self.model.predict_on_batch(padded)
            out.append(np.asarray(keras.ops.convert_to_numpy(logits), np.float64)[: len(chunk)])
            self.forward_passes += 1
        return softmax(np.concatenate(out))

    def predict(self, x):
        """Class probabilities of a (n, h, w, c) batch, from any thread (serialised)."""
        return self.executor.submit(self._forward, np.asarray(x, np.float32)).result()

    # Request decoding: every check runs before the expensive step it protects.

    def decode_image_bytes(self, data, where="image", invert="auto"):
        """An image file's bytes -> ((h, w, c) array, notes), or ApiError."""
        from PIL import Image, UnidentifiedImageError

        limit = self.limits["max_image_bytes"]
        if len(data) > limit:
            raise ApiError(413, f"{where} is {len(data)} bytes; the limit is {limit} bytes")
        try:
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                kind, (width, height) = header.format, header.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise ApiError(400, f"{where}: not an image file (send a PNG or JPEG)") from None
        if kind not in IMAGE_FORMATS:
            raise ApiError(415, f"{where} is a {kind} image; send one of {', '.join(IMAGE_FORMATS)}")
        side = self.limits["max_image_side"]
        if width > side or height > side:
            raise ApiError(413, f"{where} is {width}x{height} pixels; the limit is {side} pixels per side")
        h, w, c = self.input_shape
        try:
            return load_image(io.BytesIO(data), h, w, c, invert)
        except InputError as error:
            raise ApiError(400, f"{where}: {error}") from None

    def decode_base64(self, text, where, invert):
        if not isinstance(text, str):
            raise ApiError(400, f"{where} must be a base64 string (a PNG or JPEG file, optionally a data: URL)")
        if text.startswith("data:"):
            header, comma, text = text.partition(",")
            if not comma or not header.endswith(";base64"):
                raise ApiError(400, f"{where} is a data: URL without ';base64,' data")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where} is not valid base64") from None
        return self.decode_image_bytes(data, where, invert)

    def decode_pixels(self, pixels, where):
        h, w, c = self.input_shape
        want = f"a {h}x{w} list of numbers in [0, 1]" + (f" (or {h}x{w}x{c})" if c > 1 else "")
        if not isinstance(pixels, list):
            raise ApiError(400, f"{where} must be {want}")
        try:
            array = np.asarray(pixels, dtype=np.float32)
        except (ValueError, TypeError):
            raise ApiError(400, f"{where} must be {want}; it is ragged or not all numbers") from None
        if array.ndim == 2 and c == 1:
            array = array[..., None]
        if array.shape != (h, w, c):
            raise ApiError(400, f"{where} has shape {list(np.shape(pixels))}; it must be {want}")
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ApiError(400, f"{where} has values outside [0, 1]; scale 0-255 pixels by 1/255")
        return array, []

    def decode_item(self, item, where, invert):
        """One image of a request: a base64 string, {"image": ...} or {"pixels": ...}."""
        if isinstance(item, str):
            return self.decode_base64(item, where, invert)
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be a base64 string or an object with 'image' or 'pixels'")
        keys = set(item) & {"image", "pixels"}
        extra = set(item) - {"image", "pixels"}
        if extra or len(keys) != 1:
            raise ApiError(400, f"{where} must have exactly one of 'image' or 'pixels' (got {sorted(item)})")
        if "image" in item:
            return self.decode_base64(item["image"], f"{where}.image", invert)
        return self.decode_pixels(item["pixels"], f"{where}.pixels")

    def answer(self, probabilities, array, notes, top):
        order = np.argsort(-probabilities)[:top]
        return {
            "top": [
                {"class": int(k), "label": self.class_names[k], "probability": round(float(probabilities[k]), 6)}
                for k in order
            ],
            "input": _png_data_url(array),
            "notes": notes,
        }


def parse_request(predictor, body, content_type, query):
    """A request body -> (arrays, notes, top, batch?), or ApiError naming the bad field."""
    content_type = content_type.split(";")[0].strip().lower()
    if content_type.startswith("image/"):  # a raw file: curl --data-binary @digit.png -H 'Content-Type: image/png'
        request = {key: query[key] for key in ("top", "invert") if key in query}
        given, batch = "body", False
    elif content_type in ("application/json", ""):
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the body is not valid JSON ({str(error).splitlines()[0]})") from None
        if not isinstance(request, dict):
            raise ApiError(400, 'the body must be a JSON object such as {"image": "<base64 PNG>"}')
        unknown = sorted(set(request) - set(REQUEST_FIELDS))
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(REQUEST_FIELDS)}")
        given = [k for k in ("image", "pixels", "images") if k in request]
        if len(given) != 1:
            raise ApiError(400, "send exactly one of 'image' (base64 PNG/JPEG), 'pixels' or 'images' (a list)")
        given, batch = given[0], given[0] == "images"
    else:
        raise ApiError(415, f"Content-Type {content_type} is not supported; send application/json or an image/png body")

    invert = request.get("invert", "auto")
    if invert not in ("auto", "always", "never"):
        raise ApiError(400, f"invert must be 'auto', 'always' or 'never', got {invert!r}")
    top = request.get("top", 3)
    try:
        top = int(top)
        if isinstance(request.get("top"), (bool, float)):
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(400, f"top must be a whole number, got {request.get('top')!r}") from None
    if not 1 <= top <= predictor.num_classes:
        raise ApiError(400, f"top must be between 1 and {predictor.num_classes}, got {top}")

    if given == "body":
        items = [predictor.decode_image_bytes(body, "the request body", invert)]
    elif given == "images":
        images = request["images"]
        limit = predictor.limits["max_images"]
        if not isinstance(images, list) or not images:
            raise ApiError(400, "images must be a non-empty list of base64 strings or {'image'|'pixels'} objects")
        if len(images) > limit:
            raise ApiError(413, f"{len(images)} images in one request; the limit is {limit}")
        items = [predictor.decode_item(item, f"images[{i}]", invert) for i, item in enumerate(images)]
    elif given == "image":
        items = [predictor.decode_base64(request["image"], "image", invert)]
    else:
        items = [predictor.decode_pixels(request["pixels"], "pixels")]
    return items, top, batch


class Batcher:
    """Stacks the images of concurrent requests into shared forward passes on the predictor's thread."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.queue = None
        self.task = None

    async def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self):
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def __call__(self, x):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            count = len(items[0][0])
            # No waiting: whatever queued while the previous batch ran joins this one.
            while count < self.predictor.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
                count += len(items[-1][0])
            try:
                x = np.concatenate([x for x, _ in items])
                probabilities = await loop.run_in_executor(self.predictor.executor, self.predictor._forward, x)
            except Exception as error:  # reported to each waiting request, the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for x, future in items:
                if not future.done():
                    future.set_result(probabilities[start : start + len(x)])
                start += len(x)


async def _read_body(request, limit):
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"Content-Length {length!r} is not a number")
        if int(length) > limit:
            raise ApiError(413, f"the request is {int(length)} bytes; the limit is {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request is over the limit of {limit} bytes")
    return bytes(body)


def create_app(model_path=None, class_names=None, max_batch=32, warmup=True, limits=None, predictor=None):
    """The Starlette app: GET / (the page), POST /predict, GET /health.

    Args:
        model_path: str. A .keras file; loaded once, here.
        class_names: list of str or None. See `Predictor`.
        max_batch: int. The most images in one forward pass. Defaults to 32.
        warmup: bool. Compile every batch shape before serving. Defaults to True.
        limits: dict or None. Overrides of `DEFAULT_LIMITS`.
        predictor: Predictor or None. An already loaded model (then the
            other arguments are ignored).

    Example:
        app = create_app("model_best.keras")  # then: uvicorn.run(app, host="127.0.0.1")
    """
    _require_serving()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    predictor = predictor or Predictor(model_path, class_names, max_batch, warmup, limits)
    batcher = Batcher(predictor)
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        page_html = f.read()

    async def page(request):
        return HTMLResponse(page_html)

    async def health(request):
        return JSONResponse(predictor.info())

    async def predict(request):
        try:
            body = await _read_body(request, predictor.limits["max_request_bytes"])
            items, top, batch = await run_in_threadpool(  # image decoding stays off the event loop
                parse_request, predictor, body, request.headers.get("content-type", ""), request.query_params
            )
        except ApiError as error:
            return JSONResponse({"error": error.message}, status_code=error.status)
        probabilities = await batcher(np.stack([array for array, _ in items]))
        answers = [predictor.answer(p, array, notes, top) for p, (array, notes) in zip(probabilities, items)]
        return JSONResponse({"results": answers} if batch else answers[0])

    async def http_error(request, error):
        if error.status_code == 404:
            message = f"no such path {request.url.path}; the API is POST /predict and GET /health, the page is GET /"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return JSONResponse({"error": message}, status_code=error.status_code)

    async def server_error(request, error):  # the log gets the traceback, the client one line
        return JSONResponse({"error": f"internal error: {type(error).__name__}"}, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    return app


class serve_in_thread:
    """Runs an app with uvicorn on a background thread: `with serve_in_thread(app) as url: ...`.

    Port 0 picks a free port; `url` is the address actually bound. For tests,
    benchmarks and notebooks; the command line serves on the main thread.
    """

    def __init__(self, app, host="127.0.0.1", port=0, log_level="warning"):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="keras-vitbn-serve", daemon=True)
        self.url = None

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see its log above)")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_vitbn.serve",
        description="Serve a saved model: a drawing page at /, a JSON API at POST /predict, GET /health.",
    )
    parser.add_argument("model", help="a .keras file written by a trainer")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0 picks a free one)")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host such as 0.0.0.0 (the server has no authentication)",
    )
    parser.add_argument(
        "--class-names",
        default=None,
        help=f"a dataset ({', '.join(CLASS_NAMES)}) or comma-separated names "
        "(default: from the run's config.json, else indices)",
    )
    parser.add_argument("--max-batch", type=int, default=32, help="most images per forward pass (default %(default)s)")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_LIMITS["max_request_bytes"])
    parser.add_argument("--max-image-side", type=int, default=DEFAULT_LIMITS["max_image_side"])
    parser.add_argument("--max-images", type=int, default=DEFAULT_LIMITS["max_images"], help="images per request")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK and not args.allow_remote:
        print(
            f"error: refusing to bind {args.host}: the server has no authentication and would be reachable "
            "from other machines; pass --allow-remote if that is what you want",
            file=sys.stderr,
        )
        return 2
    try:
        _require_serving()
        import uvicorn

        names = args.class_names
        if names in CLASS_NAMES:
            names = CLASS_NAMES[names]
        elif names:
            names = [n.strip() for n in names.split(",")]
        limits = {
            "max_request_bytes": args.max_request_bytes,
            "max_image_side": args.max_image_side,
            "max_images": args.max_images,
        }
        print(
            f"loading {args.model} and compiling batch shapes up to {args.max_batch} ...", file=sys.stderr, flush=True
        )
        app = create_app(args.model, names, max_batch=args.max_batch, limits=limits)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    info = app.state.predictor.info()
    print(
        f"{info['architecture']} on {info['backend']}, classes {', '.join(info['classes'])}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0
