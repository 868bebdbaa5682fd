"""Sentence embeddings: parity with sentence-transformers (MiniLM) and transformers (SmolLM2's hidden
states), the Python API, `genlab embed`, and /v1/embeddings through the official openai SDK."""

import base64
import json

import httpx
import numpy as np
import pytest
import torch

from genlab import Embedder, GenlabError
from genlab.cli import main
from genlab.text.embed import encoder_folder, pool

TEXT = "smollm2-135m-instruct"
SENTENCES = [  # real sentences of very different lengths: every batch below pads some of them
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A monkey is playing drums.",
    "  Leading and trailing spaces, and a tab:\tthere.  ",
    "Ünïcödé, naïve café — and an emoji 🙂.",
    "The for statement is used to iterate over the elements of a sequence (such as a string, tuple or list) "
    "or other iterable object; the else clause, if present, runs when the items are exhausted.",
    "Stock markets fell sharply on Monday. " * 40,  # ~280 tokens: cut at MiniLM's max_seq_length of 256
]


@pytest.fixture(scope="module")
def minilm():
    return Embedder(device="cpu")


@pytest.fixture(scope="module")
def smol():
    return Embedder(TEXT, device="cpu")


# -- parity ----------------------------------------------------------------------------------------------

def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(encoder_folder("all-minilm-l6-v2")), device="cpu")
    expected = reference.encode(SENTENCES, batch_size=3, convert_to_tensor=True)  # (8, 384), padded batches
    assert reference.max_seq_length == minilm.max_tokens == 256
    for batch_size in (3, 32):  # batches of 3 and one batch of 8: padding must not move a vector
        minilm.batch_size = batch_size
        got = minilm.embed(SENTENCES)
        assert got.vectors.shape == (8, 384)
        assert (got.vectors - expected).abs().max() < 1e-5
    minilm.batch_size = 32
    assert got.tokens[-1] == 256  # truncated, as sentence-transformers truncates
    assert torch.allclose(got.vectors.norm(dim=1), torch.ones(8), atol=1e-6)


def test_text_model_is_mean_pooled_final_hidden_states_as_transformers_computes_them(smol):
    from transformers import AutoModel, AutoTokenizer

    from genlab.text.sources import resolve

    texts = SENTENCES[:7]
    folder = resolve(TEXT)  # the float weights converted from the bundled GGUF
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()  # LlamaModel: its output is after the final norm
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state  # (7, T, 576)
    mask = batch.attention_mask.bool()
    keep = mask.unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((states * keep).sum(1) / keep.sum(1), dim=1)
    got = smol.embed(texts)
    assert got.vectors.shape == (7, 576) and smol.dimensions == 576
    assert got.tokens == mask.sum(1).tolist()
    assert (got.vectors - expected).abs().max() < 1e-5
    assert torch.equal(pool(states, mask), pool(states, mask))  # (the reference pooling is deterministic)


def test_related_sentences_score_higher(minilm, smol):
    for embedder in (minilm, smol):
        sim = embedder.embed(SENTENCES[:4]).similarity()  # eating food / eating bread / baby / drums
        assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3], (embedder.name, sim)
        assert torch.equal(embedder.embed(SENTENCES[:4]).vectors, embedder.embed(SENTENCES[:4]).vectors)


@pytest.mark.parametrize("name,width", [("pydoc-gpt", 256), ("pydoc-mdlm", 256)])
def test_genlab_trained_text_models_embed_too(name, width):
    e = Embedder(name, device="cpu")
    one_by_one = torch.cat([e.embed(t).vectors for t in SENTENCES[:3]])
    together = e.embed(SENTENCES[:3]).vectors  # causal: one padded batch; masked-diffusion LM: one text a pass
    assert together.shape == (3, width) == one_by_one.shape
    assert (together - one_by_one).abs().max() < 1e-5


# -- the Python API ---------------------------------------------------------------------------------------

def test_token_ids_embed_as_their_text(minilm, smol):
    for embedder in (minilm, smol):
        ids = embedder.tokenize(SENTENCES[:2])
        assert torch.allclose(embedder.embed(ids).vectors, embedder.embed(SENTENCES[:2]).vectors, atol=1e-6)
        assert torch.allclose(embedder.embed(ids[0]).vectors, embedder.embed(SENTENCES[0]).vectors, atol=1e-6)


@pytest.mark.parametrize("inputs,fragment", [
    ([], "input is an empty list"),
    ("", "input[0] is empty"),
    (["ok", "   "], "input[1] is empty"),
    ([[]], "input[0] is an empty list of token ids"),
    ([[101, 10 ** 6]], "outside all-minilm-l6-v2's vocabulary (0 to 30521)"),
    ([[101, -1]], "token id -1"),
    ([list(range(300))], "reads at most 256"),
    ([1.5], "input[0] must be a string or a list of token ids"),
    ({"text": "hi"}, "input must be a string or a list"),
    (["a\ud800b"], "not valid UTF-8"),
])
def test_bad_input_is_one_line(minilm, inputs, fragment):
    with pytest.raises(GenlabError) as e:
        minilm.embed(inputs)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_bad_models_and_dimensions(minilm):
    with pytest.raises(GenlabError, match="unknown model 'no-such-model'; embedding models: all-minilm-l6-v2"):
        Embedder("no-such-model")
    with pytest.raises(GenlabError, match="'digits' is a pixel diffusion model"):
        Embedder("digits")
    with pytest.raises(GenlabError, match="cannot shorten them"):
        minilm.embed("hi", dimensions=128)
    assert minilm.embed("hi", dimensions=384).vectors.shape == (1, 384)


# -- genlab embed -----------------------------------------------------------------------------------------

def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cli_summary_json_and_errors(minilm, capsys):
    code, out, err = run(["embed", *SENTENCES[:3]], capsys)
    assert code == 0, err
    assert "384-dimensional" in out and "norm 1.0000" in out and "cosine similarity" in out
    sim = minilm.embed(SENTENCES[:3]).similarity()
    assert f"{sim[0, 1].item():8.4f}" in out.splitlines()[-3]  # row [0] of the matrix

    code, out, err = run(["embed", *SENTENCES[:2], "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == "all-minilm-l6-v2" and data["dimensions"] == 384
    assert [d["text"] for d in data["data"]] == SENTENCES[:2]
    assert np.allclose([d["embedding"] for d in data["data"]], minilm.embed(SENTENCES[:2]).vectors.numpy(), atol=1e-6)

    for args, fragment in [(["embed", "hi", ""], "TEXT[1] is empty"), (["embed", "hi", "--model", "nope"], "unknown --model 'nope'"),
                           (["embed"], "Missing argument"), (["embed", "hi", "--model", "shapes"], "it makes images")]:
        code, out, err = run(args, capsys)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("genlab: error:") and fragment in lines[0], err


# -- /v1/embeddings ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.mark.parametrize("model", ["all-minilm-l6-v2", TEXT])
def test_openai_sdk_float_and_base64(client, model, minilm, smol):
    expected = (minilm if model != TEXT else smol).embed(SENTENCES[:3])
    # asked for by name, base64 comes back as the strings; left out, the SDK asks for base64 and decodes it
    for encoding in ("float", "base64", None):
        kwargs = {"encoding_format": encoding} if encoding else {}
        answer = client.embeddings.create(model=model, input=SENTENCES[:3], **kwargs)
        assert answer.model == model and [d.index for d in answer.data] == [0, 1, 2]
        vectors = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if encoding == "base64" else d.embedding
                   for d in answer.data]
        assert np.allclose(vectors, expected.vectors.numpy(), atol=1e-6)
        assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(expected.tokens)


def test_raw_wire_format_and_token_ids(server, minilm):
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "a cat", "model": "all-minilm-l6-v2",
                                                        "encoding_format": "base64", "user": "u1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(vector, minilm.embed("a cat").vectors[0].numpy(), atol=1e-7)
    ids = minilm.tokenize(["a cat", "a dog"])
    r = httpx.post(server.url + "/v1/embeddings", json={"input": ids})  # no model: the first embedding model
    assert r.status_code == 200 and r.json()["model"] == "all-minilm-l6-v2"
    assert np.allclose([d["embedding"] for d in r.json()["data"]], minilm.embed(["a cat", "a dog"]).vectors.numpy(), atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == len(ids[0]) + len(ids[1])


def test_models_lists_the_embedding_models(server, client):
    cards = {c["id"]: c for c in httpx.get(server.url + "/v1/models").json()["data"]}
    assert cards["all-minilm-l6-v2"]["kind"] == "embedding" and cards["all-minilm-l6-v2"]["dimensions"] == 384
    assert "/v1/embeddings" in cards[TEXT]["routes"] and cards[TEXT]["kind"] == "text"
    assert client.models.retrieve("all-minilm-l6-v2").kind == "embedding"


@pytest.mark.parametrize("body,status,fragment", [
    ({"input": []}, 400, "input is an empty list"),
    ({"input": ""}, 400, "input[0] is empty"),
    ({"input": ["ok", ""]}, 400, "input[1] is empty"),
    ({"input": [[]]}, 400, "empty list of token ids"),
    ({"input": "hi", "model": "no-such-model"}, 404, "model 'no-such-model' not found; this server's embedding models: "
                                                      "all-minilm-l6-v2"),
    ({"input": "hi", "model": "digits"}, 404, "'digits' is an image model"),
    ({"input": 5}, 422, "input: must be a string, a list of strings"),
    ({"input": [1, "a"]}, 422, "input: must be a string"),
    ({"input": [True, 2]}, 422, "input: must be a string"),
    ({"input": {"text": "hi"}}, 422, "input: must be a string"),
    ({"input": None}, 422, "input"),
    ({}, 422, "input"),
    ({"input": "hi", "model": 7}, 422, "model"),
    ({"input": "hi", "encoding_format": "int8"}, 422, "encoding_format"),
    ({"input": "hi", "dimensions": 128}, 400, "cannot shorten them"),
    ({"input": "hi", "dimensons": 384}, 422, "unknown field"),
    ({"input": [[101, 999999]]}, 400, "outside all-minilm-l6-v2's vocabulary"),
    ({"input": ["a"] * 2049}, 400, "a request may embed at most 2048"),
    ({"input": ["word " * 300] * 40}, 400, "a request may embed at most 8192"),  # 40 x 256 tokens
])
def test_bad_requests_get_openai_errors(server, body, status, fragment):
    r = httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert fragment in error["message"] and set(error) == {"message", "type", "param", "code"}, error
    assert httpx.post(server.url + "/v1/embeddings", json={"input": "still up"}).status_code == 200


def test_sdk_raises_on_bad_input(client):
    import openai

    with pytest.raises(openai.BadRequestError, match="input is an empty list"):
        client.embeddings.create(model="all-minilm-l6-v2", input=[])
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
