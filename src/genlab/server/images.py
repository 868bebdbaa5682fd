"""POST /v1/images/generations: ImageGenerator behind OpenAI's image API.

Without `stream`, the answer is OpenAI's {"created", "data": [{"b64_json"}]}: PNG bytes equal
to `genlab image --seed S` and ImageGenerator().generate(..., seed=S). With `stream: true` it
is Server-Sent Events in the shape of OpenAI's image streaming: an
`image_generation.partial_image` event per denoising step (the model's current guess of the
clean picture, x0, and genlab's extension `xt_b64_json`, the noisy sample itself), then one
`image_generation.completed` event per image. The web UI draws its live preview and its
scrubbable trajectory from those events; they come from the same sampling loop as the CLI's
progress bar (ImageGenerator.stream).
"""

from __future__ import annotations

import base64
import time
from contextlib import aclosing

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from genlab.errors import check
from genlab.image.canvas import png_bytes
from genlab.image.generator import ImageRequest, pick_model
from genlab.image.request import ImageResult
from genlab.server.admission import DONE, error_event, event_stream, in_thread, sse
from genlab.server.protocol import ImagesRequest, now

router = APIRouter()


def png_b64(image) -> str:
    """The PNG bytes `genlab image` would write (canvas.png_bytes: with the receipt), base64-encoded."""
    return base64.b64encode(png_bytes(image)).decode()


@router.post("/v1/images/generations")
async def generations(body: ImagesRequest, request: Request):
    config, models = request.app.state.config, request.app.state.models
    layout = body.layout
    if body.plan:  # the LLM writes the layout (llm_to_image.py); the prompt becomes the plan's caption
        check(body.layout is None, "give plan or layout, not both: plan writes the layout from the prompt", "plan")
        check(body.prompt.strip() != "", "plan needs a prompt to plan, e.g. 'there is a small blue circle below a big red triangle'", "plan")
        layout = await anyio.to_thread.run_sync(_plan, request.app, body.prompt, body.seed or 0)
    control = {"layout": layout, "control": body.control_png()} if layout is not None or body.control else {}
    if body.control_scale is not None:
        control["control_scale"] = body.control_scale
    job = ImageRequest("" if body.plan else body.prompt, n=body.n, sampler=body.sampler, steps=body.steps, guidance=body.guidance_scale,
                       negative_prompt=body.negative_prompt, seed=body.seed, **control)  # a layout may name the prompt
    default = pick_model(job.prompt) if body.model is None else None
    name, gen = models.pick("image", body.model, default if default in models.image else None)
    check(1 <= body.n <= config.max_images, f"n must be between 1 and {config.max_images} on this server, got {body.n}")
    check(body.steps is None or body.steps <= config.max_steps, f"steps must be at most {config.max_steps} on this server, got {body.steps}")
    if body.size not in (None, "auto") and gen.pixel_shape is not None:
        _, height, width = gen.pixel_shape
        check(body.size == f"{width}x{height}", f"size {body.size!r} is not available: model {name!r} draws "
              f"{width}x{height} pictures; send size '{width}x{height}' or leave it out")
    if gen.pixel_shape is not None:  # an unknown prompt is a 400 now, not an error event mid-stream
        await anyio.to_thread.run_sync(gen.check_prompt, job)
    else:
        check(not body.stream, "stream needs a genlab model; a diffusers pipeline answers in one piece")
    ticket = request.app.state.admission.ticket("image")
    if body.stream:
        return event_stream(_stream(ticket, gen, job, body.partial_images), ticket)
    result = await ticket.run(request, lambda: _run(ticket, gen, job))
    if result is None:
        return Response(status_code=499)  # the client went away; its sampling loop has stopped
    data = [{"b64_json": png_b64(im), "revised_prompt": job.prompt} for im in result.images]
    return {"created": now(), "data": data, "model": name, "seed": result.seed,
            "timings": _timings(result.seconds, result.model_calls, len(result.images))} | (
        {"plan": job.layout.to_json()} if body.plan else {})


def _plan(app, prompt: str, seed: int):
    """The planner (SmolLM2 with its bundled adapter), loaded on the first plan request and kept."""
    from genlab.llm_to_image import planner, write_plan

    with app.state.planner_lock:
        if app.state.planner is None:
            app.state.planner = planner()
        return write_plan(prompt, app.state.planner, seed)[0]


async def _run(ticket, gen, job: ImageRequest) -> ImageResult:
    """ImageGenerator.run, step by step from the sampling thread, so that a client who leaves stops
    the sampling within a step (Ticket.run cancels this)."""
    if gen.pipeline is not None:  # a diffusers pipeline runs in one piece
        return await anyio.to_thread.run_sync(gen.run, job)
    start, last = time.perf_counter(), None
    async for last in in_thread(gen.stream(job), ticket):
        pass
    images = await anyio.to_thread.run_sync(gen.finished, job, last.xt)  # with their receipts (receipts.py)
    return ImageResult(images, job.seed, time.perf_counter() - start, last.calls)


async def _stream(ticket, gen, job: ImageRequest, partial_images: int | None):
    start, last, shown = time.perf_counter(), None, 0
    try:
        async with ticket.slot(), aclosing(in_thread(gen.stream(job), ticket)) as steps:  # closed at once if the client leaves
            async for step in steps:
                last = step
                if step.index == 0 or not _preview(step.index, step.total, partial_images):
                    continue
                x0, xt = await anyio.to_thread.run_sync(lambda: [png_b64(gen.pictures(x[:1])[0]) for x in (step.x0, step.xt)])
                yield sse({"type": "image_generation.partial_image", "b64_json": x0, "xt_b64_json": xt,
                           "partial_image_index": shown, "step": step.index, "total_steps": step.total,
                           "elapsed_s": round(time.perf_counter() - start, 4), "created_at": now()})
                shown += 1
            images = await anyio.to_thread.run_sync(gen.finished, job, last.xt)
            seconds = time.perf_counter() - start
            for i, im in enumerate(images):
                yield sse({"type": "image_generation.completed", "b64_json": png_b64(im), "index": i, "seed": job.seed,
                           "created_at": now(), "timings": _timings(seconds, last.calls, len(images))})
    except Exception as e:
        yield error_event(e, type="error")
    yield DONE


def _preview(index: int, total: int, wanted: int | None) -> bool:
    """Every step by default; else `wanted` evenly spaced steps ending at the last one."""
    if wanted is None:
        return True
    return wanted > 0 and index in {round((j + 1) * total / wanted) for j in range(wanted)}


def _timings(seconds: float, calls: int, images: int) -> dict:
    return {"seconds": round(seconds, 4), "model_calls": calls, "s_per_step": round(seconds / max(calls, 1), 4),
            "s_per_image": round(seconds / max(images, 1), 4)}
