"""genlab's HTTP server: the OpenAI API for text and images, and the web UI (`genlab serve`).

app.py        configuration, model registry, /health, /v1/models, errors, the web UI mount
text.py       /v1/chat/completions and /v1/completions
images.py     /v1/images/generations (with streamed denoising previews)
admission.py  the bounded, fair queue (a line per kind), blocking work off the event loop, cancellation, SSE
protocol.py   OpenAI's request and response shapes
"""
