"""`genlab serve`: one process serving text and images with the OpenAI HTTP API, plus the web UI.

    from genlab.server.app import ServerConfig, create_app
    app = create_app(ServerConfig())          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

The models load in a background thread after the server starts listening: /health answers
503 until they are ready, as llama.cpp's server does. Routes live in text.py and images.py;
this file holds the configuration, the model registry, the error shapes and the web UI mount.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from genlab import __version__
from genlab.errors import GenlabError, check
from genlab.registry import BUNDLED, KINDS, locate
from genlab.server.admission import Admission
from genlab.server.guards import ApiKeys, BodyLimit, HostCheck, allowed_hosts, is_loopback
from genlab.server.protocol import APIError, validation_message

log = logging.getLogger("genlab.server")


@dataclass
class ServerConfig:
    text_models: list[str] = field(default_factory=lambda: bundled("text"))  # every bundled model (registry.py)
    image_models: list[str] = field(default_factory=lambda: bundled("image"))
    concurrency: int = 1  # generations running at once
    batch: int = 8  # text generations sharing each forward pass, on an engine that batches (text/batching.py); 1 = off
    queue: int = 8  # requests of each kind (text, image) waiting for a slot before new ones get 429 (admission.py)
    max_tokens: int = 1024  # the most tokens one request may ask for
    max_images: int = 8  # the most images one request may ask for (n)
    max_steps: int = 200  # the most denoising steps one request may ask for
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    embedding_models: list[str] = field(default_factory=lambda: ["all-minilm-l6-v2"])  # sentence encoders for
    # /v1/embeddings (a bundled name or a sentence-transformers folder); every text model embeds too (embeddings.py)
    max_embedding_tokens: int = 8192  # the most tokens one /v1/embeddings request may embed (after truncation)
    host: str = "127.0.0.1"  # the address served: on loopback, only loopback Host names are answered (guards.py)
    allowed_hosts: list[str] = field(default_factory=list)  # more Host names to answer (--allowed-host)
    api_keys: list[str] = field(default_factory=list)  # when set, /v1 needs `Authorization: Bearer KEY` (guards.py)
    cors_origins: list[str] = field(default_factory=list)  # web origins allowed to call the API from a browser; none: CORS off
    device: str = "auto"

    def __post_init__(self):
        check(self.concurrency >= 1, f"--concurrency must be at least 1, got {self.concurrency}")
        check(1 <= self.batch <= 64, f"--batch must be between 1 and 64, got {self.batch}")
        check(self.queue >= 0, f"--queue must be 0 or more, got {self.queue}")
        check(self.max_tokens >= 1, f"--max-tokens must be at least 1, got {self.max_tokens}")
        check(self.max_embedding_tokens >= 1, f"--max-embedding-tokens must be at least 1, got {self.max_embedding_tokens}")
        check(self.text_models or self.image_models, "give at least one --text-model or --image-model")
        check(all(k.strip() for k in self.api_keys), "an API key cannot be empty")
        check(self.api_keys or is_loopback(self.host), f"serving on {self.host}, beyond this machine, needs an API key: "
              "give --api-key KEY or set GENLAB_API_KEY (clients then send Authorization: Bearer KEY)")


def bundled(output: str) -> list[str]:
    return [name for name, b in BUNDLED.items() if KINDS[b.kind].output == output]


def model_name(spec: str) -> str:
    """The id a client uses: a bundled name as is, a folder or file by its name."""
    return spec if spec in BUNDLED or spec.count("/") == 1 and not Path(spec).exists() \
        else Path(spec).expanduser().resolve().stem


def precheck(config: ServerConfig) -> None:
    """Fail fast, before listening, on a model that cannot load (a missing folder, a hub id offline)."""
    from genlab.text.sources import resolve

    for spec in config.text_models:
        if spec in BUNDLED or Path(spec).expanduser().exists():
            _locate_for("--text-model", spec, "text")  # finds the files; converting a GGUF waits for the loading thread
        else:
            resolve(spec)  # a hub id: in the cache, or one line
    for spec in config.image_models:
        _locate_for("--image-model", spec, "image")
    from genlab.text.embed import ENCODERS, encoder_folder

    for spec in config.embedding_models:
        check(encoder_folder(spec) is not None, f"--embedding-model {spec}: not a sentence encoder; give "
              f"{', '.join(ENCODERS)} or a sentence-transformers folder (with modules.json)")
    names = [model_name(s) for s in config.text_models + config.image_models]
    check(len(set(names)) == len(names), f"two models would have the same id: {names}")


def _locate_for(flag: str, spec: str, output: str):
    try:
        return locate(spec, output)
    except GenlabError as e:
        raise GenlabError(f"{flag} {spec}: {e}") from None


class Models:
    """The loaded models by id, filled by a background thread."""

    def __init__(self, config: ServerConfig, admission: Admission):
        self.config, self.admission = config, admission
        self.text: dict = {}  # id -> TextGenerator
        self.image: dict = {}  # id -> ImageGenerator
        self.error: str | None = None
        self.ready = threading.Event()
        self.created = int(time.time())

    def load(self) -> None:
        from genlab.image.generator import ImageGenerator
        from genlab.text.batching import Batcher, batching
        from genlab.text.generator import TextGenerator

        try:
            for spec in self.config.text_models:
                gen = TextGenerator(spec, device=self.config.device)
                gen.lm = batching(gen.lm, self.config.batch)  # concurrent requests share passes, where it can
                if isinstance(gen.lm, Batcher):  # it batches: open the batch pool
                    self.admission.batch = self.config.batch
                self.text[model_name(spec)] = gen
            for spec in self.config.image_models:
                self.image[model_name(spec)] = ImageGenerator(spec, device=self.config.device)
            log.info("models ready: %s", ", ".join([*self.text, *self.image]))
            self.ready.set()
        except Exception as e:  # shown by /health and the log; the server stays up to say so
            self.error = str(e) if isinstance(e, GenlabError) else f"{type(e).__name__}: {e}"
            log.error("genlab: error: loading models failed: %s", self.error)

    def _wait(self) -> None:
        if self.error:
            raise APIError(500, f"the models failed to load: {self.error}", type="server_error")
        if not self.ready.is_set():
            raise APIError(503, "the models are still loading; retry shortly (GET /health answers 200 when ready)",
                           type="server_error", code="loading", headers={"Retry-After": "2"})

    def pick(self, kind: str, name: str | None, default: str | None = None):
        """The generator for a request's `model`, or a 404 that lists what this server has."""
        self._wait()
        have = self.text if kind == "text" else self.image
        other = self.image if kind == "text" else self.text
        name = name or default or next(iter(have), None)
        if name in have:
            return name, have[name]
        hint = f"{name!r} is an {'image' if kind == 'text' else 'text'} model; " if name in other else f"model {name!r} not found; "
        raise APIError(404, hint + f"this server's {kind} models: {', '.join(have) or 'none'}", param="model",
                       code="model_not_found")


def create_app(config: ServerConfig | None = None, load: bool = True) -> FastAPI:
    """The FastAPI app. load=False leaves loading to the caller (tests call app.state.models.load())."""
    from genlab.server import edits, embeddings, images, text

    config = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load:  # listen at once; /health says 503 until the models are in memory
            threading.Thread(target=app.state.models.load, name="genlab-load", daemon=True).start()
        yield

    app = FastAPI(title="genlab", version=__version__, docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.config = config
    app.state.admission = Admission(config.concurrency, config.queue)
    app.state.models = Models(config, app.state.admission)
    app.state.planner, app.state.planner_lock = None, threading.Lock()  # the LLM planner, loaded on the first plan request

    _errors(app)
    # the last added runs first: Host check, then CORS (a preflight carries no key), then the key, then the size limit
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(ApiKeys, keys=config.api_keys)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(HostCheck, names=allowed_hosts(config.host, config.allowed_hosts))

    @app.get("/health")
    def health():
        m = app.state.models
        if m.error:
            return JSONResponse({"status": "error", "error": m.error}, status_code=500)
        if not m.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return {"status": "ok"}

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": _model_cards(app.state.models)}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str):
        for card in _model_cards(app.state.models):
            if card["id"] == model_id:
                return card
        raise APIError(404, f"model {model_id!r} not found", param="model", code="model_not_found")

    @app.get("/v1/genlab/stats")
    def stats():
        a = app.state.admission
        batchers = [g.lm for g in app.state.models.text.values() if hasattr(g.lm, "passes")]
        return {**a.stats(), "batched_passes": sum(b.passes for b in batchers),
                "batched_calls": sum(b.calls for b in batchers)}

    app.include_router(text.router)
    app.include_router(images.router)
    app.include_router(edits.router)
    app.include_router(embeddings.router)
    from fastapi.staticfiles import StaticFiles

    app.mount("/", StaticFiles(directory=str(resources.files("genlab") / "web"), html=True), name="web")
    return app


def _model_cards(models: Models) -> list[dict]:
    """/v1/models entries, with genlab's extensions: kind, ready, and what an image request may set."""
    cards = []
    for spec in models.config.text_models:
        name = model_name(spec)
        gen = models.text.get(name)
        cards.append({"id": name, "object": "model", "created": models.created, "owned_by": "genlab", "kind": "text",
                      "ready": gen is not None, "context_length": gen.lm.context_length if gen else None,
                      "chat": bool(gen and gen.unmasker is None and gen.tokenizer.chat_template),  # else: /v1/completions
                      **_registry_card(spec)})
    for spec in models.config.image_models:
        name = model_name(spec)
        gen = models.image.get(name)
        card = {"id": name, "object": "model", "created": models.created, "owned_by": "genlab", "kind": "image",
                "ready": gen is not None, **_registry_card(spec)}
        if gen is not None and gen.pixel_shape is not None:
            from genlab.diffusion.samplers import samplers_for

            channels, height, width = gen.pixel_shape
            card.update(size=f"{width}x{height}", samplers=[gen.default_sampler] if gen.drawer else samplers_for(gen.schedule),
                        default_sampler=gen.default_sampler, default_steps=gen.default_steps,
                        default_guidance=gen.config.guidance if gen.config else None,
                        distilled_from=(gen.config.distilled or {}).get("teacher") if gen.config else None)
        cards.append(card)
    from genlab.server.embeddings import with_embeddings

    return with_embeddings(models, cards)  # and the embedding models


def _registry_card(spec: str) -> dict:
    """What registry.py says of a model: its family, its kind, and the routes that run it."""
    try:
        kind = locate(spec).kind
    except GenlabError:  # a hub id: a causal LM that text/sources.py found in the cache
        kind = KINDS["causal-lm"]
    return {"family": kind.family, "model_kind": kind.name, "routes": list(kind.routes)}


def _errors(app: FastAPI) -> None:
    """Every failure leaves as {"error": {...}}: bad input 4xx, a bug 500 (logged), never a dropped connection."""

    def answer(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api(request: Request, e: APIError):
        return answer(e)

    @app.exception_handler(GenlabError)
    async def _genlab(request: Request, e: GenlabError):
        return answer(APIError.from_genlab(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        message, param = validation_message(e.errors())
        return answer(APIError(422, message, param=param, code="invalid_value"))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return answer(APIError(e.status_code, message, code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return answer(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))
