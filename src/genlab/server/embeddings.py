"""POST /v1/embeddings: text/embed.py's Embedder behind OpenAI's embeddings API.

The models: the sentence encoders of ServerConfig.embedding_models (all-MiniLM-L6-v2 by
default), and every text model the server runs (its mean-pooled last hidden states). Each
loads on its first request, so a server that never embeds pays nothing for them.

`encoding_format` "base64" (what the openai SDK asks for unless told otherwise) sends each
vector as its little-endian float32 bytes, base64-encoded; "float" as a JSON list. The vectors
are the ones Embedder.embed returns for the same input, and `genlab embed` prints.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Literal, Optional, Union

import anyio
import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import field_validator

from genlab.errors import check
from genlab.server.admission import in_thread
from genlab.server.protocol import APIError, Strict

router = APIRouter()
MAX_INPUTS = 2048  # inputs in one request, as OpenAI allows


class EmbeddingsRequest(Strict):
    input: Union[str, list[str], list[int], list[list[int]]]
    model: Optional[str] = None
    encoding_format: Optional[Literal["float", "base64"]] = None  # None: float
    dimensions: Optional[int] = None  # only the model's own: these models cannot be shortened
    user: Optional[str] = None

    @field_validator("input", mode="before")
    @classmethod
    def _shape(cls, v):
        # checked by hand, so the answer is one sentence rather than one complaint per member of the Union
        # (and so that pydantic's lax mode cannot turn true into 1 or 1.0 into a token id)
        def ids(x) -> bool:
            return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        if isinstance(v, str) or (isinstance(v, list) and (all(isinstance(x, str) for x in v) or ids(v)
                                                           or all(ids(x) for x in v))):
            return v
        raise ValueError("must be a string, a list of strings, a list of token ids, or a list of token id lists")


def encoder_id(spec: str) -> str:
    """The id a client names a sentence encoder by: a bundled name as is, a folder by its name."""
    from genlab.text.embed import ENCODERS

    return spec if spec in ENCODERS else Path(spec).expanduser().resolve().name


class Embedders:
    """The embedding models a server offers, each loaded on first use (once, under a lock)."""

    def __init__(self, config):
        self.config, self.loaded, self.lock = config, {}, threading.Lock()
        self.encoders = {encoder_id(s): s for s in config.embedding_models}

    def spec(self, models, name: str | None) -> tuple[str, str]:
        """(id, spec) for a request's `model`, or a 404 that lists this server's embedding models."""
        name = name or next(iter(self.encoders), None) or next(iter(models.text), None)
        if name in self.encoders:
            return name, self.encoders[name]
        if name in models.text:
            return name, models.text[name].model_name
        hint = f"{name!r} is an image model; " if name in models.image else f"model {name!r} not found; "
        raise APIError(404, hint + f"this server's embedding models: {', '.join([*self.encoders, *models.text]) or 'none'}",
                       param="model", code="model_not_found")

    def get(self, name: str, spec: str):
        from genlab.text.embed import Embedder

        with self.lock:  # two first requests load the model once
            if name not in self.loaded:
                self.loaded[name] = Embedder(spec, device=self.config.device)
            return self.loaded[name]


def embedders(app) -> Embedders:
    if not hasattr(app.state, "embedders"):  # on the event loop's thread: no other request is making one
        app.state.embedders = Embedders(app.state.config)
    return app.state.embedders


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingsRequest, request: Request):
    app, models = request.app, request.app.state.models
    models._wait()  # 503 while the text models load: the text models embed too
    name, spec = embedders(app).spec(models, body.model)
    count = 1 if isinstance(body.input, str) or (body.input and isinstance(body.input[0], int)) else len(body.input)
    check(count <= MAX_INPUTS, f"input holds {count} items; a request may embed at most {MAX_INPUTS}", "input")
    embedder = await anyio.to_thread.run_sync(embedders(app).get, name, spec)
    embedder.check_dimensions(body.dimensions)
    ids = await anyio.to_thread.run_sync(embedder.tokenize, body.input)
    tokens, limit = sum(len(t) for t in ids), app.state.config.max_embedding_tokens
    check(tokens <= limit, f"input is {tokens} tokens; a request may embed at most {limit} on this server "
          f"(its --max-embedding-tokens); send fewer or shorter inputs", "input")
    ticket = app.state.admission.ticket("embedding")  # a line of its own: a burst of embeddings does not starve chat

    async def work() -> torch.Tensor:
        vectors = torch.empty(len(ids), embedder.dimensions)
        async for rows, batch in in_thread(embedder.batches(ids), ticket):  # stops between batches if the client leaves
            vectors[rows] = batch
        return vectors

    vectors = await ticket.run(request, work)
    if vectors is None:
        return Response(status_code=499)  # the client went away
    data = [{"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format)} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def encode(vector: torch.Tensor, encoding_format: str | None):
    """A vector as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
    return vector.tolist()


def with_embeddings(models, cards: list[dict]) -> list[dict]:
    """/v1/models' cards with the embedding models: a card of kind "embedding" for each sentence
    encoder, and /v1/embeddings among the routes of each text model (which embeds too)."""
    import json

    from genlab.text.embed import encoder_folder

    for card in cards:
        if card["kind"] == "text":
            card["routes"] = [*card.get("routes", []), "/v1/embeddings"]
    for spec in models.config.embedding_models:
        folder = encoder_folder(spec)
        try:
            width = json.loads((folder / "config.json").read_text())["hidden_size"]
        except (TypeError, OSError, ValueError, KeyError):  # no such folder (GenlabError is a ValueError): a request says why
            width = None
        cards.append({"id": encoder_id(spec), "object": "model", "created": models.created, "owned_by": "genlab",
                      "kind": "embedding", "ready": models.ready.is_set(), "dimensions": width,
                      "family": "encoder", "model_kind": "sentence-encoder", "routes": ["/v1/embeddings"]})
    return cards
