"""`genlab train diffusion-lm`: a masked-diffusion LM (MDLM) on Python's own docs, with the lm's BPE tokenizer."""

import math
import shutil

import pytest
import torch

from genlab.errors import GenlabError
from genlab.diffusion import masked_lm as dlm
from genlab.autoregressive.train_lm import build_model, read_corpus, split
from genlab.training.options import DiffusionLmOptions
from test_cli import assert_one_line_error, run

TINY = DiffusionLmOptions(data="pydoc", vocab_size=512, context=32, width=64, layers=2, heads=2, steps=100, batch_size=16,
                          lr=1e-2, seed=0)
TINY_ARGS = ["train", "diffusion-lm", "--vocab-size", "400", "--context", "32", "--width", "64", "--layers", "2",
             "--heads", "2", "--batch-size", "8", "--lr", "1e-2", "--sample-every", "0"]
V = 50  # a tokenizer's vocabulary for the bare-model tests; MASK = V


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return dlm.build_diffusion_model(V, 32, 64, 2, 2).eval()


def logits_at_0_after_changing_the_last_token(model):
    x = torch.randint(V, (1, 16), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % V
    with torch.no_grad():
        return model(x)[0, 0], model(y)[0, 0]


def test_attention_is_bidirectional_and_the_gpts_is_not():
    a, b = logits_at_0_after_changing_the_last_token(tiny_model())
    assert (a - b).abs().max() > 1e-4
    torch.manual_seed(0)
    a, b = logits_at_0_after_changing_the_last_token(build_model(V + 1, 32, 64, 2, 2).eval())
    assert torch.equal(a, b)


def test_the_loss_is_the_masked_cross_entropy_over_t():
    model = tiny_model()
    x0 = torch.randint(V, (2, 8), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.25, 0.75])
    masked = torch.tensor([[1, 0, 0, 1, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1, 0, 1]], dtype=torch.bool)
    xt = torch.where(masked, V, x0)
    with torch.no_grad():
        loss = dlm.nelbo(model, x0, xt, t, V)
        logits = model(xt)  # (2, 8, V + 1)
    total, with_mask_logit = 0.0, 0.0
    for b, i in masked.nonzero().tolist():
        row = logits[b, i].clone()
        with_mask_logit += -row.log_softmax(-1)[x0[b, i]].item() / t[b].item()
        row[V] = -math.inf  # MASK is never a guess for x0
        total += -row.log_softmax(-1)[x0[b, i]].item() / t[b].item()
    assert loss.item() == pytest.approx(total / 16, rel=1e-5)
    assert abs(loss.item() - with_mask_logit / 16) > 1e-4  # the test would see a MASK logit left in


def test_t_is_stratified_and_masks_follow_t():
    t = dlm.draw_t(8, torch.Generator().manual_seed(0))
    assert ((t >= torch.arange(8) / 8) & (t < (torch.arange(8) + 1) / 8)).all() and t.min() >= dlm.T_MIN
    x0 = torch.zeros(2, 20000, dtype=torch.long)
    xt = dlm.add_masks(x0, torch.tensor([0.1, 0.7]), V, torch.Generator().manual_seed(0))
    assert (xt == V).float().mean(1).tolist() == pytest.approx([0.1, 0.7], abs=0.01)
    assert ((xt == V) | (xt == x0)).all()


def test_the_sampler_reveals_everything_in_s_calls_and_never_changes_a_token():
    model, prompt, S = tiny_model(), [3, 1, 4, 1, 5], 7
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    trajectory = list(dlm.unmask(model, prompt, V, tokens=12, steps=S, seed=0))
    assert len(calls) == S == len(trajectory) and [s.index for s in trajectory] == list(range(1, S + 1))
    before = torch.tensor(prompt + [V] * 12)
    for step in trajectory:
        assert step.ids[:5].tolist() == prompt
        kept = before != V
        assert torch.equal(step.ids[kept], before[kept])  # a revealed token never changes
        assert step.revealed == int((before == V).sum() - (step.ids == V).sum())
        before = step.ids
    assert (before != V).all() and before.max() < V and trajectory[-1].t == 0
    again = list(dlm.unmask(model, prompt, V, tokens=12, steps=S, seed=0))[-1].ids
    other = list(dlm.unmask(model, prompt, V, tokens=12, steps=S, seed=1))[-1].ids
    assert torch.equal(again, before) and not torch.equal(other, before)


def test_training_lowers_the_held_out_bound_and_the_model_folder_loads(tmp_path):
    r = dlm.DiffusionLmRun.create(tmp_path, TINY)
    start = r.held_out_perplexity_bound()
    assert start == pytest.approx(r.mask_id, rel=0.1)  # an untrained model guesses uniformly: the bound is ~V
    for _ in r.steps():
        pass
    trained = r.held_out_perplexity_bound()
    assert trained < 0.5 * start
    r.save()
    lm = dlm.DiffusionLm.load(tmp_path / "model")
    x = torch.randint(r.mask_id + 1, (1, 32))
    with torch.no_grad():
        assert torch.allclose(lm.model(x), r.model.eval()(x), atol=1e-5)
    text = lm.generate("The for statement", tokens=16, steps=8, seed=0)
    assert text and text == lm.generate("The for statement", tokens=16, steps=8, seed=0)
    assert lm.show(torch.tensor(lm.tokenizer.encode("for x").ids + [r.mask_id] * 2)) == "for x" + dlm.MASK_GLYPH * 2
    held_out = split(read_corpus("pydoc"))[1]
    assert lm.perplexity_bound(held_out) == pytest.approx(trained, rel=1e-4)  # the number training reported
    with pytest.raises(GenlabError, match="is not a `genlab train diffusion-lm` model folder"):
        dlm.DiffusionLm.load(tmp_path)
    with pytest.raises(GenlabError, match="must fit in the model's context of 32"):
        lm.generate("The for statement", tokens=30)


def test_bad_input(tmp_path, capsys):
    code, _, err = run(TINY_ARGS + ["--context", "4", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--context must be at least 8")
    code, _, err = run(TINY_ARGS + ["--data", "/nonexistent", "--out", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "--data must be 'pydoc' or a text file")
    code, _, err = run(["train", "diffusion-lm", "--resume", "--out", str(tmp_path / "none")], capsys)
    assert_one_line_error(code, err, "--resume: no checkpoint")


def test_resumes_bit_for_bit(tmp_path, capsys):
    from safetensors.torch import load_file

    args = TINY_ARGS + ["--steps", "10", "--checkpoint-every", "5"]
    code, _, err = run(args + ["--out", str(tmp_path / "a")], capsys)
    assert code == 0 and "held-out perplexity bound" in err, err
    run(args + ["--out", str(tmp_path / "b")], capsys)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000010")  # as if killed after step 5
    code, _, err = run(["train", "diffusion-lm", "--resume", "--checkpoint-every", "5", "--sample-every", "0",
                        "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "resuming at step 5 of 10" in err, err
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
