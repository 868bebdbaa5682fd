"""genlab serve: the OpenAI-compatible HTTP API and the web UI, for text and images at once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from genlab.cli import app
from genlab.progress import console


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on. The default is loopback only; 0.0.0.0 exposes the "
                                           "server to the network (it has no authentication).")] = "127.0.0.1",
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
    queue: Annotated[int, typer.Option(help="Requests that may wait for a slot; beyond that the answer is 429 "
                                            "with Retry-After.")] = 8,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="The most tokens one request may ask for.")] = 1024,
    allowed_host: Annotated[Optional[list[str]], typer.Option("--allowed-host", help="A Host name to answer besides "
                            "loopback's (repeat for several). On loopback the server answers only localhost, 127.0.0.1 "
                            "and [::1], which keeps web pages from reaching it through DNS rebinding.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn's log level: warning, info or debug.")] = "info",
):
    """Serve the OpenAI API (/v1/chat/completions, /v1/completions, /v1/images/generations, /v1/models)
    and the web UI at http://HOST:PORT/.

    Example: genlab serve --port 8000, then open http://127.0.0.1:8000/ or point any OpenAI client at
    http://127.0.0.1:8000/v1 (any API key).
    """
    import uvicorn

    from genlab.errors import check
    from genlab.server.app import ServerConfig, create_app, precheck
    from genlab.server.guards import uvicorn_config

    check(1 <= port <= 65535, f"--port must be between 1 and 65535, got {port}")
    check(log_level in ("warning", "info", "debug"), f"--log-level must be warning, info or debug, got {log_level!r}")
    defaults = ServerConfig()
    config = ServerConfig(text_models=[] if no_text else text_model or defaults.text_models,
                          image_models=[] if no_image else image_model or defaults.image_models,
                          concurrency=concurrency, batch=batch, queue=queue, max_tokens=max_tokens, device=device,
                          host=host, allowed_hosts=list(allowed_host or []))
    precheck(config)
    sock = _listen(host, port)  # before the banner: a taken port is the only line printed
    console.print(f"genlab serve: http://{host}:{port}/ (web UI) and http://{host}:{port}/v1 (OpenAI API); "
                  f"models load in the background, GET /health answers 200 when ready")
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
