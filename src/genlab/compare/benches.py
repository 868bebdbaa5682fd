"""What every family of a modality is measured against in `genlab compare` (measure.py).

Images: the 360 held-out digits and genlab's digit classifier, for FID, class accuracy and
diversity. Text: the held-out tenth of Python's documentation, an independent judge (the
bundled SmolLM2-135M) for generative perplexity, and distinct bigrams.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class ImageBench:
    """Held-out digits and the digit classifier: FID, class accuracy and diversity, the same for every family."""

    def __init__(self, samples: int):
        from ..data.digits import digits
        from ..eval.digits import DigitClassifier, diversity

        self.clf = DigitClassifier.bundled()
        self.held = digits(16, "test")
        self.held_feats = self.clf.features(self.held.x)
        self.labels = torch.arange(10).repeat_interleave(samples // 10)  # the classes asked for
        self.grid_labels = torch.arange(10).repeat(4)  # the report's sample sheet
        self.real_diversity = diversity(self.held_feats, self.held.labels)

    def quality(self, x: torch.Tensor) -> dict:
        from ..eval.digits import accuracy, diversity, fid

        f = self.clf.features(x)
        return {"fid": fid(f, self.held_feats), "accuracy": accuracy(self.clf, x, self.labels),
                "diversity": diversity(f, self.labels) / self.real_diversity}

    def real_row(self) -> dict:
        from ..data.digits import digits
        from ..eval.digits import accuracy, diversity, fid

        train, n = digits(16, "train"), len(self.labels)
        spread = torch.linspace(0, len(train.x) - 1, n).long()  # across all writers, not the first few
        feats = self.clf.features(train.x[spread])
        return {"modality": "image", "fid": fid(feats, self.held_feats), "accuracy": accuracy(self.clf, self.held.x, self.held.labels),
                "diversity": diversity(feats, train.labels[spread]) / self.real_diversity,
                "note": f"{n} training digits, spread over all writers, against the 360 held-out ones"}


class TextBench:
    """The held-out tenth of the corpus, the independent judge, and the tokenizer the text models share."""

    def __init__(self, tokenizer_folder: Path):
        from ..autoregressive.train_lm import read_corpus, split
        from ..text.tokenizer import Tokenizer

        self.held_text = split(read_corpus("pydoc"))[1]
        self.judge = Judge()
        self.tokenizer = Tokenizer.from_folder(tokenizer_folder)

    def scores(self, texts: list[str]) -> dict:
        return {"judge_perplexity": self.judge.perplexity(texts), "distinct_2": distinct_2(texts, self.tokenizer)}

    def real_row(self, n: int, chars: int = 300) -> dict:
        step = len(self.held_text) // n
        real = [self.held_text[i * step:i * step + chars] for i in range(n)]
        return {"modality": "text", **self.scores(real), "note": "held-out passages of about the same length, scored the same way"}


def distinct_2(texts: list[str], tokenizer) -> float:
    """Distinct bigrams over all bigrams of the samples' tokens (Li et al. 2016): 1 never repeats, near 0 loops."""
    pairs = [tuple(ids[i:i + 2]) for t in texts for ids in [tokenizer.encode(t, add_special_tokens=False)]
             for i in range(len(ids) - 1)]
    return len(set(pairs)) / max(1, len(pairs))


class Judge:
    """Generative perplexity: how surprising a text is to an independent language model, here
    SmolLM2-135M, bundled with genlab and trained on far more text than either model here."""

    def __init__(self):
        from ..text.engine import load_language_model
        from ..text.sources import DEFAULT_TEXT_MODEL, resolve

        self.lm = load_language_model(resolve(DEFAULT_TEXT_MODEL), dtype="float32")

    @torch.inference_mode()
    def perplexity(self, texts: list[str]) -> float:
        total, count = 0.0, 0
        for text in texts:
            ids = self.lm.tokenizer.encode(text, add_special_tokens=False)[:256]
            model = self.lm.model
            logits = model(torch.tensor([ids]), model.new_cache(len(ids)))[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
        return math.exp(total / max(1, count))
