"""LoRA for both families: genlab's merge against PEFT's, the chat loss mask, finetune commands
end to end with resume, and one clear error for each kind of bad input."""

import json
import shutil

import pytest
import torch

from test_cli import assert_one_line_error, run

peft = pytest.importorskip("peft")


def _randomise_b(model, seed=0):
    """PEFT starts B at zero (the adapter is a no-op); give it values so the merge has something to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def text_adapter(tiny_model, tmp_path_factory):
    """A PEFT adapter for the tiny Llama, written by PEFT itself, with non-zero weights."""
    from transformers import AutoModelForCausalLM

    from genlab.lora.adapter import lora_config

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = peft.get_peft_model(base, lora_config(base, 4, 8.0, 0.0, "q_proj,v_proj,down_proj"))
    _randomise_b(model)
    folder = tmp_path_factory.mktemp("adapter") / "text"
    model.save_pretrained(str(folder))
    return folder, model.eval()


def test_merge_matches_peft(text_adapter, tiny_model):
    """W + (alpha/r) B A, written in genlab/lora/adapter.py, equals PEFT's merge_and_unload, and genlab's
    engine with the adapter merged gives the logits of PEFT's unmerged model."""
    from safetensors.torch import load_file

    from genlab.lora.adapter import Adapter, merge_into
    from genlab.text.generator import TextGenerator

    folder, model = text_adapter
    ids = [5, 17, 42, 99, 7]
    with torch.no_grad():
        want_logits = model(torch.tensor([ids])).logits[0, -1]
    merged_by_peft = {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}
    base = load_file(str(tiny_model / "model.safetensors"))
    ours = merge_into(base, Adapter.load(folder))
    changed = [k for k in base if not torch.equal(base[k], ours[k])]
    assert len(changed) == 2 * 3  # two layers, three adapted matrices each
    for k in base:
        torch.testing.assert_close(ours[k], merged_by_peft[k], atol=1e-6, rtol=0)
    gen = TextGenerator(str(tiny_model), adapter=str(folder), dtype="float32")
    got = gen.lm.forward(ids, gen.lm.new_cache(len(ids) + 1))
    torch.testing.assert_close(got, want_logits, atol=1e-5, rtol=0)
    plain = TextGenerator(str(tiny_model), dtype="float32").lm
    assert not torch.allclose(plain.forward(ids, plain.new_cache(len(ids) + 1)), want_logits, atol=1e-3)


def test_chat_loss_falls_only_on_replies(tiny_model, tmp_path):
    from genlab.text.tokenizer import Tokenizer
    from genlab.lora.train_text import IGNORE, read_examples

    data = tmp_path / "chat.jsonl"
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Velmora?"},
                    {"role": "assistant", "content": "In the Pale Sea."}, {"role": "user", "content": "Capital?"},
                    {"role": "assistant", "content": "Orrin Bay."}]
    data.write_text(json.dumps({"messages": conversation}) + "\n\n")
    tok = Tokenizer.from_folder(tiny_model)
    [e] = read_examples(data, tok, 256)
    assert e.ids == tok.encode(tok.chat_prompt(conversation, add_generation_prompt=False))
    learned = tok._tok.decode([t for t in e.labels if t != IGNORE], skip_special_tokens=False)
    assert learned == "In the Pale Sea.<|im_end|>\nOrrin Bay.<|im_end|>\n"
    assert e.asked == "Where is Velmora?"
    text = tmp_path / "notes.txt"
    text.write_text("Velmora lies in the Pale Sea. " * 40)
    windows = read_examples(text, tok, 32)
    assert len(windows) > 2 and all(len(w.ids) <= 32 and w.labels == w.ids for w in windows)


@pytest.fixture(scope="module")
def velmora_small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("velmora")
    lines = [{"messages": [{"role": "user", "content": f"What is fact {i}?"},
                           {"role": "assistant", "content": f"Fact {i} is number {i * 7}."}]} for i in range(12)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (folder / "heldout.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:4]) + "\n")
    return folder


def test_finetune_text_learns_resumes_and_feeds_every_consumer(tiny_model, velmora_small, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    common = ["finetune", "text", "--model", str(tiny_model), "--data", str(velmora_small / "train.jsonl"),
              "--eval", str(velmora_small / "heldout.jsonl"), "--rank", "4", "--batch-size", "4", "--lr", "1e-2"]
    code, _, err = run(common + ["--steps", "30", "--checkpoint-every", "10", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    before, after = [float(x) for x in err.split("held-out loss ")[1].split(" on ")[0].split(" -> ")]
    assert after < before - 0.5  # it learned the replies
    assert "trainable parameters of" in err
    # killed after step 20, resumed: the same adapter, bit for bit
    code, _, err = run(common + ["--steps", "30", "--checkpoint-every", "10", "--out", str(tmp_path / "b")], capsys)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000030")
    code, _, err = run(["finetune", "text", "--resume", "--checkpoint-every", "10", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "resuming at step 20" in err, err
    a, b = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # PEFT loads it; `genlab text --adapter`, the Python API and `genlab merge` use it
    adapter = tmp_path / "a" / "adapter"
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    code, out, err = run(["text", "What is fact 3?", "--model", str(tiny_model), "--adapter", str(adapter),
                          "--temperature", "0", "--max-new-tokens", "8"], capsys)
    assert code == 0, err
    from genlab.text.generator import TextGenerator

    assert out.strip() == TextGenerator(str(tiny_model), adapter=str(adapter)).generate(
        "What is fact 3?", temperature=0, max_new_tokens=8).strip()
    code, _, err = run(["merge", "--adapter", str(adapter), "--model", str(tiny_model), "--out", str(tmp_path / "m")], capsys)
    assert code == 0, err
    merged = TextGenerator(str(tmp_path / "m")).lm
    adapted = TextGenerator(str(tiny_model), adapter=str(adapter)).lm
    ids = [3, 4, 5]
    torch.testing.assert_close(merged.forward(ids, merged.new_cache(4)), adapted.forward(ids, adapted.new_cache(4)))


@pytest.mark.parametrize("content, extra, fragment", [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n', [],
     "line 2: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', [], "line 1: no assistant message"),
    ('{"text": "hi"}\n', [], 'line 1: expected an object with a "messages" list'),
    ("   \n", [], "is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
     ["--targets", "q_proj,wq"], "unknown layer(s) wq; this model's linear layers are down_proj, gate_proj, k_proj"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n', ["--rank", "0"],
     "--rank must be an integer of at least 1"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n',
     ["--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_finetune_text_bad_input(tiny_model, tmp_path, capsys, content, extra, fragment):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    code, _, err = run(["finetune", "text", "--model", str(tiny_model), "--data", str(data), "--steps", "1",
                        "--out", str(tmp_path / "run"), *extra], capsys)
    assert_one_line_error(code, err, fragment)


def test_adapter_for_another_base_is_refused(text_adapter, tiny_model, tmp_path, capsys):
    from conftest import build_tiny_model

    folder, _ = text_adapter

    def relabelled(base) -> str:  # the same adapter, recording another base model
        copy = tmp_path / f"adapter-{len(list(tmp_path.iterdir()))}"
        copy.mkdir()
        config = json.loads((folder / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path=base)))
        (copy / "adapter_model.safetensors").write_bytes((folder / "adapter_model.safetensors").read_bytes())
        return str(copy)

    code, _, err = run(["text", "hi", "--model", str(tiny_model), "--adapter", relabelled("smollm2-135m-instruct")], capsys)
    assert_one_line_error(code, err, "was trained on 'smollm2-135m-instruct', not")
    other = build_tiny_model(tmp_path / "wide", vocab_size=384, n_kv_heads=4)  # k_proj/v_proj have another shape
    capsys.readouterr()  # building it may print transformers' own progress bar, which is not genlab's output
    code, _, err = run(["text", "hi", "--model", str(other), "--adapter", relabelled(None)], capsys)
    assert_one_line_error(code, err, "does not fit this model: model.layers.0.self_attn.v_proj is (64, 64) here")
    code, _, err = run(["text", "hi", "--model", str(tiny_model), "--adapter", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "is not a PEFT adapter folder")
    broken = relabelled(None)
    (tmp_path / broken / "adapter_model.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    code, _, err = run(["text", "hi", "--model", str(tiny_model), "--adapter", broken], capsys)
    assert_one_line_error(code, err, "cannot be read")
    dora = relabelled(None)
    config = json.loads((tmp_path / dora / "adapter_config.json").read_text())
    (tmp_path / dora / "adapter_config.json").write_text(json.dumps(dict(config, use_dora=True)))
    code, _, err = run(["text", "hi", "--model", str(tiny_model), "--adapter", dora], capsys)
    assert_one_line_error(code, err, "is a DoRA adapter")


# -- images ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_attention_diffusion(tmp_path_factory):
    from genlab.diffusion.denoiser import DiffusionConfig, Denoiser, save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "attn-diffusion"
    config = DiffusionConfig(resolution=8, widths=(16, 32), attention_levels=(1,), class_names=["0", "1", "2"])
    save_model(Denoiser(config), folder)
    return folder


def test_image_merge_matches_peft_for_linear_and_conv_layers(tiny_attention_diffusion, tmp_path):
    from genlab.diffusion.denoiser import load_model
    from genlab.image.generator import ImageGenerator
    from genlab.lora.adapter import lora_config

    model = load_model(tiny_attention_diffusion)
    config = lora_config(model.unet, 2, 4.0, 0.0, "all-linear,conv1,conv2")
    assert {"to_q", "to_out.0", "time_emb_proj", "conv1"} <= set(config.target_modules)
    model.unet = peft.get_peft_model(model.unet, config)
    _randomise_b(model)
    model.unet.peft_config["default"].base_model_name_or_path = str(tiny_attention_diffusion)
    model.unet.save_pretrained(str(tmp_path / "adapter"))
    xt, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2])
    with torch.no_grad():
        want = model.eval()(xt, t, labels)
    gen = ImageGenerator(str(tiny_attention_diffusion), adapter=str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(gen.model(xt, t, labels), want, atol=1e-5, rtol=0)
        off = ImageGenerator(str(tiny_attention_diffusion), adapter=str(tmp_path / "adapter"), adapter_scale=0.0)
        torch.testing.assert_close(off.model(xt, t, labels), load_model(tiny_attention_diffusion)(xt, t, labels))


def test_finetune_image_resumes_bit_for_bit_and_generates(tiny_attention_diffusion, tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import load_file

    data = tmp_path / "data"
    for label in ("0", "2"):
        (data / label).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 255 if label == "2" else 0).save(data / label / f"{i}.png")
    common = ["finetune", "image", "--model", str(tiny_attention_diffusion), "--data", str(data), "--rank", "2",
              "--batch-size", "8", "--checkpoint-every", "3"]
    code, _, err = run(common + ["--steps", "6", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    run(common + ["--steps", "6", "--out", str(tmp_path / "b")], capsys)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000006")  # as if killed after step 3
    code, _, err = run(["finetune", "image", "--resume", "--checkpoint-every", "3", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "resuming at step 3" in err, err
    a, b = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "samples" / "step-0000006.png").is_file()
    out = tmp_path / "x.png"
    code, _, err = run(["image", "2", "--model", str(tiny_attention_diffusion), "--adapter", str(tmp_path / "a" / "adapter"),
                        "--steps", "3", "--seed", "0", "--out", str(out)], capsys)
    assert code == 0 and out.is_file(), err


def test_finetune_image_bad_input(tiny_attention_diffusion, tiny_t2i_folder, tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    Image.new("L", (8, 8)).save(data / "a.png")
    base = ["finetune", "image", "--model", str(tiny_attention_diffusion), "--steps", "1", "--out", str(tmp_path / "r")]
    code, _, err = run(base + ["--data", str(tmp_path / "data")], capsys)
    assert_one_line_error(code, err, "classes the model does not know: cat; its classes are 0, 1, 2")
    (tmp_path / "data" / "cat").rename(tmp_path / "data" / "0")
    code, _, err = run(base + ["--data", str(tmp_path / "data"), "--targets", "conv9"], capsys)
    assert_one_line_error(code, err, "unknown layer(s) conv9")
    code, _, err = run(["finetune", "image", "--model", str(tiny_t2i_folder), "--data", "digits", "--out", str(tmp_path / "t")],
                       capsys)
    assert_one_line_error(code, err, "is a text-to-image model")
    code, _, err = run(["image", "7", "--model", "digits", "--adapter", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "is not a PEFT adapter folder")


@pytest.mark.slow
def test_bundled_smollm2_learns_velmora(tmp_path, capsys):
    """The documented example, shortened: SmolLM2 learns facts it cannot know, from the shipped data."""
    from pathlib import Path

    from genlab.text.generator import TextGenerator

    data = Path(__file__).resolve().parent.parent / "examples" / "velmora"
    code, _, err = run(["finetune", "text", "--data", str(data / "train.jsonl"), "--eval", str(data / "heldout.jsonl"),
                        "--steps", "40", "--checkpoint-every", "40", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    before, after = [float(x) for x in err.split("held-out loss ")[1].split(" on ")[0].split(" -> ")]
    assert before > 2 and after < 0.5, (before, after)
    gen = TextGenerator(adapter=str(tmp_path / "run" / "adapter"))
    assert "Orrin Bay" in gen.generate("Can you name the capital of Velmora?", temperature=0, max_new_tokens=20)


def test_merge_writes_sharded_models_shard_by_shard(text_adapter, tiny_model, tmp_path, capsys):
    """A base saved in several safetensors shards: every adapted layer is merged, whichever shard holds it."""
    import shutil as sh

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(sharded, max_shard_size="100KB")
    for f in tiny_model.glob("tokenizer*"):
        sh.copy2(f, sharded / f.name)
    assert len(list(sharded.glob("*.safetensors"))) > 2
    folder, _ = text_adapter
    anonymous = tmp_path / "adapter"  # an adapter that does not record its base: --model decides
    anonymous.mkdir()
    config = json.loads((folder / "adapter_config.json").read_text())
    (anonymous / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path=None)))
    sh.copy2(folder / "adapter_model.safetensors", anonymous / "adapter_model.safetensors")
    folder = anonymous
    for base, out in ((sharded, "m-sharded"), (tiny_model, "m-single")):
        code, _, err = run(["merge", "--adapter", str(folder), "--model", str(base), "--out", str(tmp_path / out)], capsys)
        assert code == 0, err
    merged = {}
    for f in (tmp_path / "m-sharded").glob("*.safetensors"):
        merged |= load_file(str(f))
    single = load_file(str(tmp_path / "m-single" / "model.safetensors"))
    assert all(torch.equal(merged[k], single[k]) for k in single if k in merged)
    assert {k for k in single if "q_proj" in k} <= set(merged)
