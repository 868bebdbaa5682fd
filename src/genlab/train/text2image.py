"""Training latent text-to-image on the shapes world: the VAE first, then the UNet in its latent space.

    genlab train vae --out runs/shapes-vae
    genlab train text2image --vae runs/shapes-vae --out runs/shapes

The VAE sees freshly drawn pictures at every step (image/shapes.py makes any number).
The UNet learns from a pool of `images` captioned pictures encoded once when the run
starts: latents by the VAE, captions by the frozen text encoder. Running MiniLM on every
batch would cost more than the UNet step itself; a resumed run rebuilds the same pool.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import check
from ..image import autoencoder
from ..image.shapes import Scene, ShapesWorld, masks, object_spans, render
from ..image.text2image import TextToImage, TextToImageConfig, save_text2image
from ..store import atomic_dir
from .diffusion import P_UNCOND, denoising_loss
from .loop import StepStats, Trainer, TrainConfig, resume_steps

SAMPLE_PROMPTS = ["a red circle", "two blue squares", "a green triangle on the left", "a yellow square at the bottom",
                  "a purple circle above an orange triangle", "a blue triangle to the left of a red square",
                  "a big green circle", "a small yellow triangle and a blue circle"]


def shapes_batch(world: ShapesWorld, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
    """Pictures (B, 3, 32, 32) in [-1, 1] and their captions, for these example indices."""
    x, captions, _ = pictures(world.example(i) for i in indices)
    return x, captions


def pictures(examples) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """(scene, caption) pairs -> their pictures (B, 3, 32, 32) in [-1, 1], captions and scenes."""
    from ..image.canvas import from_pil

    scenes, captions = zip(*examples)
    return torch.cat([from_pil(render(s)) for s in scenes]), list(captions), list(scenes)


# --- the VAE -----------------------------------------------------------------------------------


@dataclass
class VaeRun:
    """out/checkpoints/step-N, and out/model: the EMA weights as a diffusers AutoencoderKL folder."""

    trainer: Trainer
    vae: torch.nn.Module
    out: Path

    @classmethod
    def create(cls, out: Path, options: dict) -> "VaeRun":
        torch.manual_seed(options["seed"])  # the initial weights
        vae = autoencoder.build_vae()
        return cls(Trainer(vae, TrainConfig(**options), {"kind": "vae"}), vae, out)

    @classmethod
    def resume(cls, out: Path, given: dict) -> "VaeRun":
        checkpoint, meta = Trainer.newest_run_checkpoint(out)
        check(meta["extra"].get("kind") == "vae", f"{out} is not a `genlab train vae` run")
        steps = resume_steps(meta["config"], given, meta["step"])
        vae = autoencoder.build_vae()
        return cls(Trainer.resume(vae, checkpoint, steps), vae, out)

    def steps(self) -> Iterator[StepStats]:
        world, batch = ShapesWorld("train", self.trainer.config.seed), self.trainer.batch

        def loss(vae, g: torch.Generator) -> torch.Tensor:
            x, _ = shapes_batch(world, torch.randint(2**31 - 1, (batch,), generator=g).tolist())
            return autoencoder.vae_loss(vae, x, g)

        yield from self.trainer.run(loss)

    def ema(self) -> torch.nn.Module:
        vae = copy.deepcopy(self.vae).eval()
        vae.load_state_dict(self.trainer.ema.shadow)
        return vae

    def save(self) -> Path:
        """A checkpoint, and out/model with the latent scale measured on 500 training pictures."""
        path = self.trainer.save(self.out / "checkpoints")
        vae = self.ema()
        x, _ = shapes_batch(ShapesWorld("train", seed=12345), list(range(500)))
        vae.register_to_config(scaling_factor=autoencoder.measure_scaling(vae, x))
        with atomic_dir(self.out / "model") as tmp:
            vae.save_pretrained(tmp)
        return path

    def sample_grid(self, path: Path) -> Path:
        """Held-out pictures (top row) above their reconstructions (bottom row)."""
        from ..image.canvas import grid, save_png, to_pil, upscale

        x, _ = shapes_batch(ShapesWorld("heldout-combo", 0), list(range(8)))
        with torch.no_grad():
            vae = self.ema()
            recon = autoencoder.decode(vae, autoencoder.encode(vae, x))
        save_png(upscale(grid(to_pil(torch.cat([x, recon.clamp(-1, 1)])), columns=8), 2), path, "reconstructions")
        return path


# --- the text-conditioned UNet -----------------------------------------------------------------


@dataclass
class Pool:
    latents: torch.Tensor  # (P, 4, 8, 8) scaled VAE latents
    states: torch.Tensor  # (P, max_tokens, 384) float16 text-encoder states of the captions
    null: torch.Tensor  # (max_tokens, 384) the empty prompt's states, for caption dropout
    masks: torch.Tensor  # (P, 2, 8, 8) float16: where each object is (the second all 0 for one object)
    owners: torch.Tensor  # (P, max_tokens) int8: the object each token names (token_owners)


def build_pool(model: TextToImage, images: int, seed: int, on_progress=None, chunk: int = 250) -> Pool:
    """Encode `images` training examples once: pictures through the VAE, captions through the
    text encoder; and keep the ground truth the binding loss needs (object masks, token owners)."""
    world, size = ShapesWorld("train", seed), model.config.latent_size
    latents, states, object_masks, owners, cache = [], [], [], [], {}
    with torch.no_grad():
        for start in range(0, images, chunk):
            x, captions, scenes = pictures(world.example(i) for i in range(start, min(start + chunk, images)))
            latents.append(model.encode(x))
            new = sorted(set(captions) - cache.keys())
            if new:  # the same caption twice is encoded once
                cache |= dict(zip(new, model.encoder(new)[0].half()))
            states.append(torch.stack([cache[c] for c in captions]))
            for scene, text in zip(scenes, captions):
                m = torch.tensor(masks(scene, size))
                object_masks.append(torch.cat([m, torch.zeros(2 - len(m), size, size)]).half())
                owners.append(token_owners(model.encoder.tokenizer, text, len(scene.objects), model.config.max_tokens))
            if on_progress:
                on_progress(min(start + chunk, images))
    return Pool(torch.cat(latents), torch.cat(states), model.encoder([""])[0][0], torch.stack(object_masks),
                torch.stack(owners))


# --- the binding loss: each object's words attend to where that object is ----------------------

BINDING_MAX_T = float(__import__("os").environ.get("GENLAB_BMAXT", "1.0"))  # EXPERIMENT
BOTH = 2  # token_owners' mark for a word naming both objects ("two red circles")


def token_owners(tokenizer, caption: str, objects: int, max_tokens: int) -> torch.Tensor:
    """(max_tokens,) int8: for each token of the caption as the text encoder reads it, the object
    its word names (0 or 1, BOTH for a count caption's one description of two objects), or -1
    (special tokens, padding, "a", "to the left of", ...)."""
    spans = object_spans(caption)
    enc = tokenizer(caption, padding="max_length", truncation=True, max_length=max_tokens, return_offsets_mapping=True)
    owner = torch.full((max_tokens,), -1, dtype=torch.int8)
    for i, (a, b) in enumerate(enc["offset_mapping"]):
        for k, (start, end) in enumerate(spans):
            if b > a and start <= a and b <= end:
                owner[i] = BOTH if objects > len(spans) else k
    return owner


class CrossAttentionRecorder:
    """An attention processor for the UNet's cross-attention layers: diffusers' plain attention
    (softmax(QK^T / sqrt(d)) V), keeping each layer's map (B * heads, HW, tokens) in `maps`."""

    def __init__(self):
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B * heads, HW, d)
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B * heads, L, d)
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)  # (B * heads, HW, L): each position's weights over the tokens
        self.maps.append(probs)
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))

    def install(self, unet) -> None:
        """Record every cross-attention layer (attn2); self-attention keeps its processor."""
        unet.set_attn_processor({name: self if name.endswith("attn2.processor") else proc
                                 for name, proc in unet.attn_processors.items()})


def binding_loss(maps: list[torch.Tensor], object_masks: torch.Tensor, owners: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """How much of each object word's attention falls outside that object, averaged over the
    layers: mean (1 - share inside)^2, as in TokenCompose (Wang et al. 2024, eq. 4). The shapes
    world knows where every object is, so the masks are exact. object_masks (B, 2, h, w),
    owners (B, L), seen (B,): the pictures whose caption was not dropped."""
    batch = object_masks.shape[0]
    both = object_masks.sum(1, keepdim=True).clamp(max=1)
    where = torch.cat([object_masks, both], 1)  # (B, 3, h, w): object 0, object 1, BOTH
    words = (owners >= 0) & seen[:, None]  # (B, L)
    if not words.any():
        return object_masks.new_zeros(())
    losses = []
    for probs in maps:
        hw = probs.shape[1]
        a = probs.view(batch, -1, hw, probs.shape[-1]).mean(1)  # (B, HW, L), the heads averaged
        m = torch.nn.functional.adaptive_avg_pool2d(where, int(hw ** 0.5)).flatten(2)  # (B, 3, HW)
        inside = torch.einsum("bql,bkq->blk", a, m) / a.sum(1).unsqueeze(-1).clamp(min=1e-8)  # (B, L, 3)
        share = inside.gather(2, owners.long().clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, L)
        losses.append(((1 - share) ** 2)[words].mean())
    return torch.stack(losses).mean()


@dataclass
class Text2ImageRun:
    """out/checkpoints/step-N (the UNet), and out/model: the whole pipeline folder (text2image.py)."""

    trainer: Trainer
    model: TextToImage
    out: Path
    images: int
    binding: float = 0.0  # the weight of binding_loss next to the denoising loss; 0: plain SD training
    pool: Pool | None = None

    @classmethod
    def create(cls, out: Path, options: dict) -> "Text2ImageRun":
        o = dict(options)
        vae_folder, images, binding = str(Path(o.pop("vae")).expanduser().resolve()), o.pop("images"), o.pop("binding")
        model = cls._model(vae_folder, o["seed"])
        extra = {"kind": "text2image", "vae": vae_folder, "images": images, "binding": binding}
        return cls(Trainer(model.unet, TrainConfig(**o), extra), model, out, images, binding)

    @classmethod
    def resume(cls, out: Path, given: dict) -> "Text2ImageRun":
        checkpoint, meta = Trainer.newest_run_checkpoint(out)
        extra = meta["extra"]
        check(extra.get("kind") == "text2image", f"{out} is not a `genlab train text2image` run")
        same = lambda key, was, now: was == now or (key == "vae" and str(Path(now).expanduser().resolve()) == was)  # noqa: E731
        binding = extra.get("binding", 0.0)
        steps = resume_steps(meta["config"] | {"vae": extra["vae"], "images": extra["images"], "binding": binding},
                             given, meta["step"], same)
        model = cls._model(extra["vae"], meta["config"]["seed"])
        return cls(Trainer.resume(model.unet, checkpoint, steps), model, out, extra["images"], binding)

    @staticmethod
    def _model(vae_folder: str, seed: int) -> TextToImage:
        from diffusers import AutoencoderKL

        folder = Path(vae_folder)
        folder = folder / "model" if (folder / "model" / "config.json").is_file() else folder  # a `train vae` --out folder
        check((folder / "config.json").is_file(), f"--vae {vae_folder}: no trained VAE there; run `genlab train vae` first")
        vae = AutoencoderKL.from_pretrained(folder).eval()
        torch.manual_seed(seed)  # the UNet's initial weights
        return TextToImage(TextToImageConfig(), vae)

    def prepare(self, on_progress=None) -> None:
        """Encode the training pool (steps() does it too, if not done yet)."""
        if self.pool is None:
            self.pool = build_pool(self.model, self.images, self.trainer.config.seed, on_progress)

    def steps(self) -> Iterator[StepStats]:
        self.prepare()
        pool, c, batch = self.pool, self.model.config, self.trainer.batch
        schedule = c.noise_schedule()
        recorder = CrossAttentionRecorder()
        if self.binding:
            recorder.install(self.model.unet)

        def loss(unet, g: torch.Generator) -> torch.Tensor:
            idx = torch.randint(len(pool.latents), (batch,), generator=g)
            z0, states = pool.latents[idx], pool.states[idx].float()  # (B, 4, 8, 8), (B, L, 384)
            dropped = noisy = None

            def denoise(zt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                nonlocal dropped, noisy
                noisy = t >= BINDING_MAX_T * c.train_steps
                dropped = torch.rand(batch, generator=g) < P_UNCOND  # the empty prompt, for guidance
                cond = torch.where(dropped[:, None, None], pool.null.float(), states)
                return unet(zt, t, encoder_hidden_states=cond).sample

            recorder.maps.clear()
            loss = denoising_loss(denoise, schedule, z0, c.prediction, g)
            if not self.binding:
                return loss
            binding = binding_loss(recorder.maps, pool.masks[idx].float(), pool.owners[idx], ~dropped & ~noisy)
            recorder.maps.clear()  # the graph keeps what backward needs; a copy of the UNet (ema()) must not
            return loss + self.binding * binding

        yield from self.trainer.run(loss)

    def ema(self) -> TextToImage:
        """The model with the UNet's EMA weights (sharing the VAE and the text encoder)."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet = copy.deepcopy(self.model.unet).eval()
        unet.load_state_dict(self.trainer.ema.shadow)
        unet.set_attn_processor(AttnProcessor2_0())  # not the training run's CrossAttentionRecorder
        return TextToImage(self.model.config, self.model.vae, self.model.encoder, unet)

    def save(self) -> Path:
        path = self.trainer.save(self.out / "checkpoints")
        with atomic_dir(self.out / "model") as tmp:
            save_text2image(self.ema(), tmp)
        return path

    def sample_grid(self, path: Path, steps: int = 20) -> Path:
        """One sample per prompt in SAMPLE_PROMPTS, seed 0, the default sampler and guidance."""
        from ..image.canvas import grid, save_png, upscale
        from ..image.generator import ImageGenerator

        gen = ImageGenerator.from_model(self.ema())
        cells = [gen.generate(p, steps=steps, seed=0)[0] for p in SAMPLE_PROMPTS]
        save_png(upscale(grid(cells, columns=len(cells)), 2), path, "sample grid")
        self.model.unet.train()
        return path
