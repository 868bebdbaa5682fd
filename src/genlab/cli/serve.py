"""genlab serve: the OpenAI-compatible HTTP API and the web UI, for text and images at once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from genlab.cli import app
from genlab.progress import console


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on. The default is loopback only; 0.0.0.0 exposes the "
                                           "server to the network, which needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    text_model: Annotated[Optional[list[str]], typer.Option("--text-model", help="Text model to serve (repeat for "
                          "several): a bundled name, a .gguf file, a Hugging Face folder or hub id. [default: "
                          "every bundled text model: smollm2-135m-instruct, pydoc-gpt, pydoc-mdlm]")] = None,
    image_model: Annotated[Optional[list[str]], typer.Option("--image-model", help="Image model to serve (repeat for "
                           "several): a bundled name or a model folder. [default: every bundled image model: digits, "
                           "shapes, digits-gan, digits-ar]")] = None,
    no_text: Annotated[bool, typer.Option("--no-text", help="Serve no text model.")] = False,
    no_image: Annotated[bool, typer.Option("--no-image", help="Serve no image model.")] = False,
    concurrency: Annotated[int, typer.Option(help="Generations running at once. On a CPU, 1 is fastest overall: "
                                                  "one generation already uses every core.")] = 1,
    batch: Annotated[int, typer.Option(help="Text generations decoded together, sharing each forward pass (the onnx "
                                            "engine; each still gets exactly its own text). 1 turns batching off.")] = 8,
    queue: Annotated[int, typer.Option(help="Requests of each kind (text, image, embedding) that may wait for a "
                                            "slot; beyond that the answer is 429 with Retry-After. Freed slots go "
                                            "to the kinds in turn, so images cannot starve chat.")] = 8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="The most tokens one request may ask for.")] = 1024,
    allowed_host: Annotated[Optional[list[str]], typer.Option("--allowed-host", help="A Host name to answer besides "
                            "loopback's (repeat for several). On loopback the server answers only localhost, 127.0.0.1 "
                            "and [::1], which keeps web pages from reaching it through DNS rebinding.")] = None,
    api_key: Annotated[Optional[list[str]], typer.Option("--api-key", envvar="GENLAB_API_KEY", show_envvar=True,
                       help="Require this key on every /v1 request (Authorization: Bearer KEY); repeat for several, "
                            "or set GENLAB_API_KEY (keys separated by spaces). Needed to serve beyond loopback. "
                            "/health and the web page stay open; the page asks for the key once.")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="A web origin (e.g. "
                           "https://app.example) whose pages may call the API from a browser; repeat for several. "
                           "Without it CORS is off.")] = None,
    max_body: Annotated[int, typer.Option("--max-body-bytes", help="Request bodies larger than this get 413.")] = 1 << 20,
    embedding_model: Annotated[Optional[list[str]], typer.Option("--embedding-model", help="A sentence encoder for "
                               "/v1/embeddings (repeat for several): all-minilm-l6-v2 or a sentence-transformers folder. "
                               "Every text model embeds too. [default: all-minilm-l6-v2]")] = None,
    max_embedding_tokens: Annotated[int, typer.Option("--max-embedding-tokens", help="The most tokens one "
                                                      "/v1/embeddings request may embed.")] = 8192,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn's log level: warning, info or debug.")] = "info",
):
    """Serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/images/generations, /v1/embeddings, /v1/models)
    and the web UI at http://HOST:PORT/.

    Example: genlab serve --port 8000, then open http://127.0.0.1:8000/ or point any OpenAI client at
    http://127.0.0.1:8000/v1 (any API key, unless --api-key set one).
    """
    import uvicorn

    from genlab.errors import check
    from genlab.server.app import ServerConfig, create_app, precheck
    from genlab.server.guards import uvicorn_config

    check(1 <= port <= 65535, f"--port must be between 1 and 65535, got {port}")
    check(max_body >= 1024, f"--max-body-bytes must be at least 1024, got {max_body}")
    check(log_level in ("warning", "info", "debug"), f"--log-level must be warning, info or debug, got {log_level!r}")
    defaults = ServerConfig()
    config = ServerConfig(text_models=[] if no_text else text_model or defaults.text_models,
                          image_models=[] if no_image else image_model or defaults.image_models,
                          concurrency=concurrency, batch=batch, queue=queue, max_tokens=max_tokens, device=device,
                          host=host, allowed_hosts=list(allowed_host or []), api_keys=list(api_key or []),
                          cors_origins=list(cors_origin or []), max_body_bytes=max_body,
                          embedding_models=embedding_model or defaults.embedding_models,
                          max_embedding_tokens=max_embedding_tokens)
    precheck(config)
    sock = _listen(host, port)  # before the banner: a taken port is the only line printed
    console.print(f"genlab serve: http://{host}:{port}/ (web UI) and http://{host}:{port}/v1 (OpenAI API); "
                  f"models load in the background, GET /health answers 200 when ready"
                  + (f"; /v1 needs one of {len(config.api_keys)} API key(s)" if config.api_keys else ""))
    server = uvicorn.Server(uvicorn_config(create_app(config), log_level=log_level))
    server.run(sockets=[sock])


def _listen(host: str, port: int):
    """Bind here rather than in uvicorn, so a taken port is one line and exit 2, not a log and exit 1."""
    import socket

    from genlab.errors import GenlabError

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise GenlabError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock
