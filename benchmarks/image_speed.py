"""Sampling speed: genlab's sampler loop vs a diffusers pipeline, same weights, same scheduler.

    python benchmarks/image_speed.py [--steps 50] [--batch 1 16] [--repeats 5]

Both sides run the bundled digits UNet's weights with DDIM (eta 0) from the same noise:
  - genlab: ImageGenerator.generate(..., sampler="ddim", guidance=1);
  - diffusers: DDIMPipeline with a UNet2DModel holding the same weights and a DDIMScheduler
    configured like the model (cosine schedule, v-prediction, trailing timesteps, no clipping).
DDIMPipeline is unconditional, so a forward pre-hook hands the UNet the class label that
genlab passes itself; guidance is 1 on both sides (one model call per step). It reports
seconds per image, steps per second, the ratio, and the largest pixel difference between
the two outputs. The two sides take turns, run by run, so that the shared machine's slow
spells fall on both. The bundled model denoises 8x8 and draws 16x16 (its `upsample`), so the
diffusers side enlarges its output the same way (genlab.data.digits.enlarge, inside the timing).
The figures in docs/benchmarks.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("GENLAB_QUIET", "1")

import torch  # noqa: E402


def timed(fn_a, fn_b, repeats):
    """Median seconds of each of two functions, run alternately (a, b, a, b, ...) so that a slow
    spell of this shared machine lands on both sides; each is warmed up once first."""
    fns, times, outs = (fn_a, fn_b), ([], []), [fn_a(), fn_b()]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t)
    return statistics.median(times[0]), outs[0], statistics.median(times[1]), outs[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import diffusers

    from genlab import ImageGenerator
    from genlab.data.digits import enlarge

    gen = ImageGenerator()
    c = gen.config
    # diffusers gets a plain UNet2DModel holding the same weights (genlab's subclass only caches `dtype`)
    unet = diffusers.UNet2DModel.from_config(gen.model.unet.config)
    unet.load_state_dict(gen.model.unet.state_dict())
    unet.eval()
    digit = 7
    hook = unet.register_forward_pre_hook(
        lambda module, a, kw: (a, kw | {"class_labels": torch.full((a[0].shape[0],), digit)}), with_kwargs=True)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=c.train_steps, beta_schedule="squaredcos_cap_v2",
                                        prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing")
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    size = gen.model.pixel_shape[-1]

    def diffusers_pictures(n):
        images = pipe(batch_size=n, num_inference_steps=args.steps, output_type="np", generator=torch.Generator().manual_seed(0)).images
        x = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # (n, 1, h, w) in [-1, 1], as the UNet made it
        return x if x.shape[-1] == size else enlarge(x, size)

    print(f"bundled digits UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters, denoising "
          f"{c.resolution}x{c.resolution}, drawing {size}x{size}), "
          f"DDIM {args.steps} steps, torch {torch.__version__}, {torch.get_num_threads()} threads, diffusers {diffusers.__version__}")
    print(f"{'batch':>5} {'genlab s/img':>12} {'diffusers s/img':>15} {'genlab steps/s':>14} {'diffusers steps/s':>17} {'ratio':>6} {'max |diff|':>10}")
    for n in args.batch:
        ours_s, ours, theirs_s, theirs = timed(lambda: gen.run(_request(n, args.steps)).images,
                                               lambda: diffusers_pictures(n), args.repeats)
        a = torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8) for im in ours]).float()
        b = ((theirs.reshape(n, -1) + 1) * 127.5).round()
        print(f"{n:5d} {ours_s / n:12.4f} {theirs_s / n:15.4f} {args.steps / ours_s:14.1f} {args.steps / theirs_s:17.1f} "
              f"{theirs_s / ours_s:6.2f} {(a - b).abs().max().item():10.0f}")
    hook.remove()


def _request(n, steps):
    from genlab.image.generator import ImageRequest

    return ImageRequest("7", n=n, sampler="ddim", steps=steps, guidance=1.0, seed=0)


if __name__ == "__main__":
    main()
