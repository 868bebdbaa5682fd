"""The DiT backbone (diffusion/dit.py): shapes, adaLN-Zero, training through `genlab train diffusion --backbone dit`."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from genlab.diffusion.denoiser import Denoiser, DiffusionConfig, load_model
from genlab.diffusion.dit import DiT, position_table
from genlab.diffusion.train import DiffusionRun
from genlab.errors import GenlabError
from genlab.training.options import DiffusionOptions
from test_cli import assert_one_line_error, run

SMALL = (2, 32, 2, 2)  # patch, width, depth, heads


@pytest.mark.parametrize("resolution,channels,classes,patch", [(8, 1, 10, 2), (8, 3, 0, 4), (16, 1, 3, 1), (12, 2, 5, 3)])
def test_output_is_shaped_like_the_input(resolution, channels, classes, patch):
    model = DiT(resolution, channels, classes, patch=patch, dim=32, depth=2, heads=2)
    torch.nn.init.normal_(model.out.weight)  # past adaLN-Zero's zero output
    x = torch.randn(3, channels, resolution, resolution)
    labels = torch.tensor([0, classes, 1]) if classes else None
    assert model(x, torch.tensor([0.0, 500.0, 999.0]), labels).shape == x.shape


def test_adaln_zero_starts_every_block_as_the_identity_and_the_output_at_zero():
    model = DiT(8, 1, 10, patch=2, dim=32, depth=3, heads=2)
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    cos, sin = model.rope_cos, model.rope_sin
    for block in model.blocks:
        assert torch.equal(block(x, c, cos, sin), x)
    assert torch.equal(model(torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])), torch.zeros(2, 1, 8, 8))


def test_each_output_patch_is_its_tokens_own():
    """Unpatchify puts token n's p x p values back where patch n came from: changing one input patch
    with attention and MLPs switched off (gates 0) changes exactly that output patch."""
    model = DiT(8, 1, 0, patch=2, dim=32, depth=1, heads=2).eval()
    torch.nn.init.normal_(model.out.weight)
    x = torch.randn(1, 1, 8, 8)
    y = x.clone()
    y[..., 2:4, 4:6] += 1  # patch (row 1, column 2)
    changed = (model(y, torch.tensor([10.0])) - model(x, torch.tensor([10.0]))).abs() > 1e-6
    assert changed[..., 2:4, 4:6].all() and changed.sum() == 4


def test_positions_tell_every_patch_apart():
    table = position_table(4, 32)
    assert table.shape == (16, 32) and torch.cdist(table, table).add(torch.eye(16)).min() > 0.1


def test_dit_trains_saves_and_samples(tmp_path, capsys):
    run_ = DiffusionRun.create(tmp_path / "r", DiffusionOptions(steps=80, batch_size=32, lr=3e-3, warmup=10, resolution=8,
                                                                 backbone="dit", dit=SMALL, sample_every=0))
    assert isinstance(run_.model.dit, DiT)
    losses = [s.loss for s in run_.steps()]
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    run_.save()
    loaded = load_model(tmp_path / "r" / "model")
    assert loaded.config.backbone == "dit"
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 600.0]), torch.tensor([3, 10])
    assert torch.allclose(loaded(x, t, labels), _ema(run_)(x, t, labels), atol=1e-6)
    code, _, err = run(["image", "3", "--model", str(tmp_path / "r"), "--steps", "4", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0, err


def _ema(run_) -> Denoiser:
    import copy

    ema = copy.deepcopy(run_.model)
    ema.load_state_dict(run_.trainer.ema.shadow)
    return ema.eval()


def test_bad_backbone_and_shapes_are_one_line(tmp_path, capsys):
    code, _, err = run(["train", "diffusion", "--backbone", "vit", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--backbone must be unet or dit, got 'vit'")
    with pytest.raises(GenlabError, match="patch dividing the image size 8"):
        DiffusionConfig(resolution=8, backbone="dit", dit=(3, 128, 2, 4))
    with pytest.raises(GenlabError, match="unknown backbone 'vit'; choose one of: unet, dit"):
        DiffusionConfig(backbone="vit")


def test_lora_refuses_a_dit(tmp_path, capsys):
    run_ = DiffusionRun.create(tmp_path / "r", DiffusionOptions(steps=1, batch_size=4, resolution=8, backbone="dit", dit=SMALL,
                                                                 sample_every=0))
    list(run_.steps())
    run_.save()
    code, _, err = run(["finetune", "image", "--model", str(tmp_path / "r"), "--data", "digits", "--out", str(tmp_path / "a")],
                       capsys)
    assert_one_line_error(code, err, "is a DiT; `genlab finetune image` adapts UNet models")


def test_text_to_image_dit_trains_saves_and_draws(tmp_path, capsys):
    """--backbone dit for text-to-image: cross-attention to the prompt, the layout's channels as extra input."""
    from genlab.diffusion.text2image import load_text2image

    out = tmp_path / "t2i"
    code, _, err = run(["train", "text2image", "--vae", "shapes", "--backbone", "dit", "--out", str(out), "--steps", "2",
                        "--images", "24", "--batch-size", "4", "--layout-warmup", "2", "--sample-every", "2"], capsys)
    assert code == 0, err
    assert (out / "model" / "dit" / "model.safetensors").is_file() and not (out / "model" / "unet").exists()
    model = load_text2image(out / "model")
    assert model.config.backbone == "dit" and model.unet is None and model.dit.text_embed is not None
    cond = model.condition("a red circle above a blue square", 2)
    other = model.condition("a green triangle", 2)
    zt, t = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 800.0])
    torch.nn.init.normal_(model.dit.out.weight)  # past adaLN-Zero's zero output
    assert not torch.allclose(model(zt, t, **cond), model(zt, t, **other))  # the prompt reaches the prediction
    code, _, err = run(["image", "a red circle", "--model", str(out), "--steps", "2", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_hot_inputs_replay_a_traced_graph_that_matches_eager_exactly(backbone):
    config = DiffusionConfig(resolution=8, channels=1, widths=[16, 32], attention_levels=[1], class_names=list("abc"),
                             backbone=backbone, dit=list(SMALL))
    model = Denoiser(config).eval().requires_grad_(False)
    for p in model.parameters():  # past adaLN-Zero's zeros, so every layer shows in the output
        p.add_(torch.randn_like(p) * 0.05)
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([900.0, 100.0]), torch.tensor([0, 3])
    with torch.inference_mode():
        eager = model.network(x, t, labels)
        outs = [model(x, t, labels) for _ in range(Denoiser.HOT_CALLS + 2)]
        graph = model._hot[next(iter(model._hot))]
        assert isinstance(graph, torch.jit.ScriptModule)  # traced once the shape was hot
        assert all(torch.equal(o, eager) for o in outs)
        x2 = torch.randn(2, 1, 8, 8)
        assert torch.equal(model(x2, t * 0.5, labels), model.network(x2, t * 0.5, labels))  # new values, same graph
        next(model.parameters()).mul_(1.5)  # the graph shares the weights, so it sees edits to them
        assert torch.equal(model(x, t, labels), model.network(x, t, labels))
        assert not torch.equal(model(x, t, labels), eager)
    model._hot.clear()
    with torch.inference_mode(), ThreadPoolExecutor(4) as pool:  # the server's threads: one trace, every answer exact
        x3 = torch.randn(1, 1, 8, 8)
        def call(_):
            with torch.inference_mode():  # grad mode is per thread; the server's threads run in inference mode too
                return model(x3, t[:1], labels[:1])

        outs = list(pool.map(call, range(3 * Denoiser.HOT_CALLS)))
        assert all(torch.equal(o, model.network(x3, t[:1], labels[:1])) for o in outs)
        assert [type(g) for g in model._hot.values()] == [torch.jit.TopLevelTracedModule]
    with torch.enable_grad():  # training-style calls never take the traced path
        model.requires_grad_(True)
        assert model(x, t, labels).grad_fn is not None
