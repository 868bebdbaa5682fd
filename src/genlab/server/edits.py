"""POST /v1/images/edits: change a picture, in OpenAI's multipart shape (what `client.images.edit` sends).

    curl http://127.0.0.1:8000/v1/images/edits -F image=@seven.png -F prompt="a handwritten 3" -F strength=0.8

With a `mask` it inpaints: the masked part is drawn anew and the rest kept. Like OpenAI, a mask
with transparency marks the part to repaint by its transparent pixels; a mask without
transparency marks it white, as AUTOMATIC1111's does. Without a mask it runs img2img: the
picture is noised to `strength` (0 keeps it, 1 replaces it) and denoised towards the prompt
(SDEdit). Both are ImageGenerator's `init_image`, `mask` and `strength`, so the answer equals
`genlab image --init-image ... --mask ... --seed S`. Only diffusion models can edit; a GAN or the
pixel GPT draws from scratch, and a request for one gets a 400 naming the models that edit.
"""

from __future__ import annotations

import io
from typing import Literal, Optional

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError, field_validator

from genlab.errors import check
from genlab.image.generator import ImageRequest, pick_model
from genlab.server.images import _run, _timings, png_b64
from genlab.server.protocol import APIError, Strict, now

router = APIRouter()
FILES = ("image", "mask")


class EditForm(Strict):
    """The form's text fields. OpenAI's own options that change nothing here are accepted at their neutral values."""

    prompt: str
    model: Optional[str] = None
    n: int = 1
    size: Optional[str] = None
    response_format: Optional[Literal["b64_json"]] = None
    user: Optional[str] = None
    quality: Optional[Literal["auto", "standard"]] = None
    background: Optional[Literal["auto", "opaque"]] = None
    output_format: Optional[Literal["png"]] = None
    # extensions, with AUTOMATIC1111's meaning
    strength: Optional[float] = None  # img2img: how much to change the picture, 0 to 1 (default 0.75; inpainting 1)
    seed: Optional[int] = None
    steps: Optional[int] = None
    sampler: Optional[str] = None
    guidance_scale: Optional[float] = None
    negative_prompt: Optional[str] = None

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_absent(cls, v):
        return None if v == "" else v  # a form sends an empty field for "not given"


async def read_form(request: Request) -> tuple[EditForm, dict[str, bytes]]:
    """The multipart body -> (its text fields, checked; its files' bytes). Malformed data is a 400."""
    from starlette.datastructures import UploadFile

    kind = request.headers.get("content-type", "")
    check(kind.startswith("multipart/form-data"), f"send the picture as multipart/form-data (as client.images.edit "
          f"does: fields image, prompt and optionally mask), not {kind.split(';')[0] or 'no content type'}")
    try:
        form = await request.form(max_files=len(FILES) + 1, max_fields=40)
    except Exception as e:  # starlette's MultiPartException, or the parser's own error on a broken body
        raise APIError(400, f"the multipart body could not be read: {e}", code="invalid_multipart") from None
    fields, files = {}, {}
    for key, value in form.multi_items():
        name = key.removesuffix("[]")  # the SDK names a list of files image[]
        if isinstance(value, UploadFile):
            check(name in FILES, f"unexpected file field {key!r}; send image and optionally mask", key)
            check(name not in files, f"send one {name}; genlab edits one picture at a time", name)
            files[name] = await value.read()
        else:
            check(key not in fields, f"the field {key!r} is given twice", key)
            fields[key] = value
    check("image" in files, "image is required: the picture to edit, as a file field (PNG)", "image")
    try:
        return EditForm(**fields), files
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def mask_picture(data: bytes) -> io.BytesIO:
    """A mask upload -> a black-and-white PNG, white where to repaint (ImageGenerator's convention).
    Transparent pixels mark the area when the mask has transparency (OpenAI), white ones otherwise."""
    from PIL import Image

    from genlab.image.canvas import open_image

    upload = io.BytesIO(data)
    open_image(upload, "mask")  # the same checks as any picture: readable, not too large
    upload.seek(0)
    with Image.open(upload) as im:
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            alpha = im.convert("RGBA").getchannel("A")
            white = alpha.point(lambda a: 255 if a < 128 else 0)
        else:
            white = im.convert("L").point(lambda v: 255 if v >= 128 else 0)
    out = io.BytesIO()
    white.save(out, format="PNG")
    return out


@router.post("/v1/images/edits")
async def edits(request: Request):
    config, models = request.app.state.config, request.app.state.models
    form, files = await read_form(request)
    image = io.BytesIO(files["image"])
    mask = await anyio.to_thread.run_sync(mask_picture, files["mask"]) if "mask" in files else None
    strength = form.strength if form.strength is not None else 1.0 if mask is not None else 0.75
    job = ImageRequest(form.prompt, n=form.n, sampler=form.sampler, steps=form.steps, guidance=form.guidance_scale,
                       negative_prompt=form.negative_prompt, seed=form.seed, init_image=image, mask=mask, strength=strength)
    default = pick_model(job.prompt) if form.model is None else None
    name, gen = models.pick("image", form.model, default if default in models.image else None)
    editors = [n for n, g in models.image.items() if g.drawer is None]
    if gen.drawer is not None:
        raise APIError(400, f"model {name!r} ({gen.kind.title}) draws from scratch and cannot edit a picture; "
                            f"the models here that edit: {', '.join(editors) or 'none'}", param="model", code="edit_not_supported")
    check(1 <= form.n <= config.max_images, f"n must be between 1 and {config.max_images} on this server, got {form.n}", "n")
    check(form.steps is None or form.steps <= config.max_steps,
          f"steps must be at most {config.max_steps} on this server, got {form.steps}", "steps")
    if form.size is not None and gen.pixel_shape is not None:
        _, height, width = gen.pixel_shape
        check(form.size in ("auto", f"{width}x{height}"), f"size {form.size!r} is not available: model {name!r} draws "
              f"{width}x{height} pictures (the upload is resized to that); send size '{width}x{height}' or leave it out", "size")
    await anyio.to_thread.run_sync(gen.check_prompt, job)  # a 400 now: the prompt, and picture and mask readable and aligned
    ticket = request.app.state.admission.ticket("image")
    result = await ticket.run(request, lambda: _run(ticket, gen, job))  # a client who leaves stops the sampling
    if result is None:
        return Response(status_code=499)
    data = [{"b64_json": png_b64(im), "revised_prompt": job.prompt} for im in result.images]
    return {"created": now(), "data": data, "model": name, "seed": result.seed,
            "timings": _timings(result.seconds, result.model_calls, len(result.images))}
