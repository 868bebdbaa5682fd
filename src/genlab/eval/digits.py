"""How good are generated digits? A bundled classifier gives two answers:

- class accuracy: does the prompt "7" give pictures the classifier calls 7?
- FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the
  classifier's penultimate features of generated and of held-out real digits,

      FID = |mu_g - mu_r|^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2)).

Inception-v3 features (the usual FID) know nothing of 8x8 digits and cannot be downloaded
here, so genlab uses its own classifier, trained on the digits' training split only. Images
of any resolution are area-averaged to 8x8 before it sees them. FID falls with more samples,
so only compare FIDs computed from the same number of samples; `real_floor` gives the
FID of real training digits against the held-out ones, the best a generator can expect.

    clf = DigitClassifier.bundled()
    fid(clf.features(generated), clf.features(held_out))   # generated: (N, 1, H, W) in [-1, 1]
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.digits import digits


# FID estimated from N samples is biased by roughly (feature dim)^2 / N: 32 features keep it
# small at the few hundred samples a CPU can generate, where 64 features swamped the signal.
FEATURES = 32


class DigitClassifier(nn.Module):
    """A small CNN on 8x8 greyscale digits: two 3x3 convolutions, then 32 features, then 10 logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURES)
        self.fc2 = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [-1, 1], any H = W >= 8 -> (N, 32) penultimate features."""
        if x.shape[-1] != 8:
            x = F.adaptive_avg_pool2d(x, 8)  # area average down to the data's native 8x8
        h = F.relu(self.conv1(x))  # (N, 32, 8, 8)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (N, 64, 4, 4)
        return F.relu(self.fc1(h.flatten(1)))  # (N, FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))

    @classmethod
    def bundled(cls) -> "DigitClassifier":
        from ..store import load_weights

        model = cls()
        model.load_state_dict(load_weights(bundled_path()))
        return model.eval().requires_grad_(False)


def bundled_path() -> Path:
    return Path(str(resources.files("genlab") / "weights" / "digits-classifier" / "model.safetensors"))


def train_classifier(epochs: int = 40, seed: int = 0) -> DigitClassifier:
    """Train on the 1437 training digits at 8x8, with one-pixel random shifts; a few seconds."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = digits(resolution=8, split="train")
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.x), generator=g).split(64):
            x = data.x[idx]
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))  # small shifts: generated digits are not centred exactly
            loss = F.cross_entropy(model(x), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: DigitClassifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(x.float()).argmax(-1) == labels).float().mean().item()


def fid(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets."""
    import warnings

    from scipy import linalg

    a, b = feats_a.double().numpy(), feats_b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # features that are always 0 make the product singular
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # nudge both covariances off singular, as pytorch-fid does
            offset = np.eye(a.shape[1]) * 1e-6
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real  # drop the tiny imaginary parts that numerical error leaves
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def diversity(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean distance between two pictures of the same class, in classifier features.

    Mode collapse, a generator drawing nearly the same 7 every time, shows here long before
    it shows in class accuracy. Divide by the same number for real digits: 1 is as varied as
    the data, 0.2 is a generator that has found a few pictures per class it likes."""
    per_class = []
    for c in labels.unique():
        f = features[labels == c]
        if len(f) > 1:
            d = torch.cdist(f, f)  # (n, n), zero diagonal
            per_class.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(per_class).mean())


@torch.no_grad()
def real_floor(model: DigitClassifier, resolution: int, n: int) -> float:
    """FID of n real training digits against the held-out ones, at the given resolution."""
    train, test = digits(resolution, "train"), digits(resolution, "test")
    return fid(model.features(train.x[:n]), model.features(test.x))


if __name__ == "__main__":  # python -m genlab.eval.digits: rebuild the bundled classifier
    from safetensors.torch import save_file

    clf = train_classifier()
    test = digits(8, "test")
    print(f"held-out accuracy {accuracy(clf, test.x, test.labels):.4f}")
    bundled_path().parent.mkdir(parents=True, exist_ok=True)
    save_file(clf.state_dict(), str(bundled_path()))
    print(f"saved {bundled_path()}")
