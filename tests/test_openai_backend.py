"""The ``openai`` backend: against a small fake server (protocol details, concurrency, failures)
and against vLLM's real OpenAI server serving the tiny random Qwen2-VL on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vlm import REPO, poster_db, vllm_env, vllm_python  # noqa: E402

from posterkg.errors import ConfigError, PosterkgError  # noqa: E402
from posterkg.store import open_store  # noqa: E402
from posterkg.vlm.knowledge import load_schema  # noqa: E402
from posterkg.vlm.runner import tag_posters  # noqa: E402

GOOD = '{"points": [{"type": "Lighting", "value": "low-key", "confidence": 0.75}]}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeServer:
    """Just enough of the OpenAI chat API; records requests and peak concurrency."""

    def __init__(self, truncate_request: int | None = None):
        self.requests: list[dict] = []
        self.in_flight = 0
        self.peak = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, obj, code=200):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": "fake-vlm", "object": "model",
                                                         "created": 0, "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    nth = len(outer.requests)
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                time.sleep(0.15)
                with outer.lock:
                    outer.in_flight -= 1
                if nth == truncate_request:
                    content, finish = GOOD[:30], "length"
                else:
                    content, finish = GOOD, "stop"
                self._send({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                            "choices": [{"index": 0, "finish_reason": finish,
                                         "message": {"role": "assistant", "content": content}}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_protocol_concurrency_and_truncation(ml1m_dir, tmp_path):
    from posterkg.vlm.backends import get_backend

    db = poster_db(tmp_path, ml1m_dir / "posters", 8)
    spec = load_schema().build_spec()
    with FakeServer(truncate_request=3) as server:
        backend = get_backend("openai", None, base_url=server.url, concurrency=4)
        assert backend.model == "fake-vlm"           # the server's first listed model
        try:
            with open_store(db) as store:
                summary = tag_posters(store, backend, spec, batch_size=8)
                reasons = dict(store.execute(
                    "SELECT reason, count(*) FROM tag_status WHERE status = 'failed' GROUP BY 1").fetchall())
                points = store.execute("SELECT count(*) FROM raw_points").fetchone()[0]
        finally:
            backend.close()
    assert len(server.requests) == 8
    assert server.peak >= 2                          # requests of a batch are concurrent
    req = server.requests[0]
    assert req["model"] == "fake-vlm" and req["temperature"] == 0 and req["max_tokens"] == spec.max_tokens
    assert req["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "poster_knowledge_points", "schema": spec.json_schema, "strict": True}}
    content = req["messages"][0]["content"]
    assert content[1] == {"type": "text", "text": spec.prompt}
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).format == "JPEG"
    assert summary["done"] == 7 and summary["failed"] == 1 and reasons == {"truncated": 1}
    assert points == 7


def test_images_are_resized_to_the_pixel_budget(tmp_path):
    from posterkg.vlm.backends import get_backend
    from posterkg.vlm.base import PosterJob

    big = tmp_path / "5.jpg"
    Image.new("RGB", (1200, 1800), (200, 30, 30)).save(big)
    with FakeServer() as server:
        backend = get_backend("openai", "Qwen/Qwen2-VL-2B-Instruct", base_url=server.url, max_pixels=100_000)
        try:
            [res] = backend.tag_batch([PosterJob(5, big)], load_schema().build_spec())
        finally:
            backend.close()
    assert res.raw == GOOD and res.finish_reason == "stop"
    url = server.requests[0]["messages"][0]["content"][0]["image_url"]["url"]
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.width * img.height <= 100_000 and img.width % 28 == 0 and img.height % 28 == 0


def test_remote_url_needs_allow_remote():
    from posterkg.vlm.backends import get_backend

    with pytest.raises(ConfigError, match="allow_remote"):
        get_backend("openai", "m", base_url="http://192.0.2.1:8000/v1")


def test_unreachable_server_is_a_clean_error():
    from posterkg.vlm.backends import get_backend

    with pytest.raises(PosterkgError, match="cannot reach"):
        get_backend("openai", None, base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=0, timeout=5)


# -- the real thing: vLLM's OpenAI server on the tiny model ------------------------------------------
@pytest.fixture(scope="module")
def vllm_server(tiny_vlm_dir, tmp_path_factory):
    py = vllm_python()
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_vlm_dir),
           "--served-model-name", "tiny-qwen2-vl", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
           "--limit-mm-per-prompt", '{"image": 1, "video": 0}',
           "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=vllm_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited ({proc.returncode}):\n{log.read_text()[-5000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not healthy after 400 s:\n{log.read_text()[-5000:]}")
            time.sleep(2)
        yield base + "/v1"
    finally:
        import os
        import signal

        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.vllm
def test_tags_eight_posters_through_vllm_openai_server(vllm_server, ml1m_dir, tmp_path):
    db = poster_db(tmp_path, ml1m_dir / "posters", 8)
    cfg = tmp_path / "posterkg.toml"
    cfg.write_text(f'[tag.openai]\nbase_url = "{vllm_server}"\nconcurrency = 4\n')
    cmd = [sys.executable, "-m", "posterkg", "tag", "--backend", "openai", "--db", str(db),
           "--config", str(cfg), "--batch-size", "4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**vllm_env(), "POSTERKG_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = load_schema().build_spec()
    answers: dict[int, dict] = {}
    with open_store(db, read_only=True) as store:
        assert store.execute("SELECT status, count(*) FROM tag_status GROUP BY 1").fetchall() == [("done", 8)]
        assert store.execute("SELECT DISTINCT backend, model FROM raw_points").fetchall() == [
            ("openai", "tiny-qwen2-vl")]
        for m, t, v, c in store.execute("SELECT movie_id, type, value, confidence FROM raw_points").fetchall():
            c = int(c) if float(c).is_integer() else c
            answers.setdefault(m, {"points": []})["points"].append({"type": t, "value": v, "confidence": c})
    assert len(answers) == 8
    for obj in answers.values():
        jsonschema.validate(obj, spec.json_schema)
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**vllm_env(), "POSTERKG_PROGRESS": "0"})
    assert again.returncode == 0, again.stderr
    with open_store(db, read_only=True) as store:
        assert store.execute("SELECT skipped, done FROM tag_runs ORDER BY started_at DESC LIMIT 1").fetchone() == (8, 0)
