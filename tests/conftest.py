"""Shared fixtures. Nothing here downloads anything: the tiny model is built in-test."""

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GENLAB_QUIET", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(autouse=True, scope="session")
def genlab_home(tmp_path_factory):
    """Keep every cache the tests write out of the user's home."""
    home = os.environ.get("GENLAB_TEST_HOME") or str(tmp_path_factory.mktemp("genlab-home"))
    os.environ["GENLAB_HOME"] = home
    return Path(home)


def build_tiny_model(folder: Path, *, vocab_size: int = 384, tie: bool = True, n_kv_heads: int = 2, seed: int = 0,
                     context: int = 256) -> Path:
    """A real Hugging Face model folder: a byte-level BPE trained on Python's own docs and a random Llama."""
    import torch
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(topics.values())[:60], trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=n_kv_heads, max_position_embeddings=context,
                      tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def build_tiny_diffusion(folder: Path, class_names=("0", "1", "2"), resolution: int = 8, seed: int = 0) -> Path:
    """A genlab diffusion model folder with random weights: small enough to sample in milliseconds."""
    import torch

    from genlab.diffusion.denoiser import DiffusionConfig, Denoiser, save_model

    torch.manual_seed(seed)
    config = DiffusionConfig(resolution=resolution, widths=(16, 32), attention_levels=(), class_names=list(class_names))
    save_model(Denoiser(config), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_diffusion(tmp_path_factory) -> Path:
    return build_tiny_diffusion(tmp_path_factory.mktemp("tiny") / "tiny-diffusion")


def build_tiny_text2image(folder: Path, seed: int = 0, layout: int = 0, classes: tuple[int, ...] = ()) -> Path:
    """A genlab text-to-image folder (a diffusers SD layout plus genlab.json) with random, tiny weights;
    `layout` > 0 adds a prompt layout of that many channels, `classes` its class groups."""
    import torch

    from genlab.diffusion.text2image import TextToImage, TextToImageConfig, save_text2image

    torch.manual_seed(seed)
    model = TextToImage(TextToImageConfig(vae_widths=(16, 16, 16), widths=(32, 32), heads=2, layout_channels=layout,
                                          layout_width=16, layout_classes=classes))
    model.vae.register_to_config(scaling_factor=0.5)
    save_text2image(model, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_t2i_folder(tmp_path_factory) -> Path:
    return build_tiny_text2image(tmp_path_factory.mktemp("t2i") / "shapes")


def start_server(app, timeout: float = 300.0, ready: bool = True):
    """Run a real uvicorn server for `app` on a free loopback port, in a thread; wait until /health is 200."""
    import socket
    import threading
    import time
    import urllib.error
    import urllib.request
    from types import SimpleNamespace

    import uvicorn

    from genlab.server.guards import uvicorn_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                break
        except urllib.error.HTTPError:  # 503 while loading
            if not ready:
                break
        except OSError:  # not listening yet
            pass
        time.sleep(0.2)
    else:
        raise RuntimeError(f"the test server at {url} was not ready in {timeout} s")

    def stop():
        server.should_exit = True
        thread.join(10)

    return SimpleNamespace(url=url, app=app, stop=stop)


@pytest.fixture(scope="session")
def server():
    """genlab serve with the bundled models (SmolLM2, digits, shapes): one generation at a time, two waiting."""
    from genlab.server.app import ServerConfig, create_app

    s = start_server(create_app(ServerConfig(concurrency=1, batch=1, queue=2)))
    yield s
    s.stop()
