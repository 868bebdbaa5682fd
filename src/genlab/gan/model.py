"""A class-conditional GAN (DCGAN-style): the generator that makes an image in one step,
and the discriminator that trains it. The min-max training step is in gan/train.py.

    gan = Gan.load("runs/gan/model")                 # or Gan.bundled()
    images = gan.generate(torch.tensor([7, 7, 3]), seed=0)   # (3, 1, 16, 16) in [-1, 1]

Generator (Radford et al. 2016): a noise vector z and the class's embedding become a 4x4
feature map, which transposed convolutions double until the full resolution; batch norm
and ReLU between them, tanh at the end. Discriminator: strided convolutions halve the image
down to 4x4, then one score, plus a projection term <embed(class), features> (Miyato &
Koyama 2018) that makes the score about "a real 7" rather than "a real digit". Spectral norm
on every discriminator layer keeps it 1-Lipschitz, the standard guard against the
instability GANs are known for, and a minibatch-deviation feature lets it see how varied
a batch is. Neither stopped this generator from ignoring its noise and drawing one digit per
class (diversity 0.2-0.4 of the data's); the mode-seeking term in gan/train.py did.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import check
from ..store import bundled_weights

CONFIG_FILE = "genlab.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class GanConfig:
    resolution: int = 16  # a power of two, at least 8
    channels: int = 1
    latent: int = 64  # length of the noise vector z
    width: int = 64  # channels of the generator's last (largest) feature map and the discriminator's first
    class_names: list[str] = field(default_factory=list)
    loss: str = "hinge"  # or "non-saturating" (Goodfellow et al. 2014, section 3)
    d_lr_scale: float = 1.0  # the discriminator's learning rate over the generator's (TTUR, Heusel et al. 2017)
    mode_seeking: float = 0.0  # weight of the mode-seeking term in G's loss (Mao et al. 2019); 0 = off

    def __post_init__(self):
        r = self.resolution
        check(r >= 8 and r & (r - 1) == 0, f"a GAN's --resolution must be a power of two >= 8, got {r}")
        check(self.loss in ("hinge", "non-saturating"), f"--loss must be hinge or non-saturating, got {self.loss!r}")

    @property
    def doublings(self) -> int:  # 4x4 -> resolution
        return self.resolution.bit_length() - 3

    @property
    def num_classes(self) -> int:
        return max(1, len(self.class_names))


class Generator(nn.Module):
    def __init__(self, c: GanConfig):
        super().__init__()
        self.config = c
        top = c.width * 2 ** c.doublings  # channels at 4x4, halved at each doubling
        self.embed = nn.Embedding(c.num_classes, c.latent)
        self.project = nn.Sequential(nn.Linear(2 * c.latent, top * 16), nn.Unflatten(1, (top, 4, 4)),
                                     nn.BatchNorm2d(top), nn.ReLU())
        ups = []
        for i in range(c.doublings):
            ch = top // 2 ** i
            ups += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
        self.up = nn.Sequential(*ups)
        self.to_image = nn.Conv2d(c.width, c.channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, latent) noise and (B,) labels -> (B, C, H, W) images in [-1, 1]."""
        h = self.project(torch.cat([z, self.embed(labels)], dim=1))
        return torch.tanh(self.to_image(self.up(h)))


class Discriminator(nn.Module):
    def __init__(self, c: GanConfig):
        super().__init__()
        layers, ch = [spectral_norm(nn.Conv2d(c.channels, c.width, 3, padding=1)), nn.LeakyReLU(0.2)], c.width
        for _ in range(c.doublings):
            layers += [spectral_norm(nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # (B, ch, 4, 4)
        self.score = spectral_norm(nn.Linear((ch + 1) * 16, 1))
        self.embed = spectral_norm(nn.Embedding(c.num_classes, (ch + 1) * 16))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images and their (B,) labels -> (B,) realness scores (logits).
        Call it on a batch of real images or on a batch of generated ones, never a mix."""
        h = self.features(x)
        # Minibatch standard deviation (Karras et al. 2018): one extra feature map holding how much
        # the batch varies. A generator that draws the same digit every time is now easy to spot.
        spread = h.std(dim=0).mean().expand(h.shape[0], 1, *h.shape[2:]) if len(h) > 1 else torch.zeros_like(h[:, :1])
        h = torch.cat([h, spread], dim=1).flatten(1)
        return self.score(h).squeeze(1) + (self.embed(labels) * h).sum(1)


class Gan(nn.Module):
    """Both networks in one module, so the shared Trainer optimises, averages and checkpoints them together."""

    def __init__(self, config: GanConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """For the Trainer: the discriminator learns d_lr_scale times faster than the generator."""
        return [(list(self.generator.parameters()), 1.0), (list(self.discriminator.parameters()), self.config.d_lr_scale)]

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.config.latent, generator=generator)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """One network evaluation per batch: noise drawn from `seed`, in label order."""
        g = torch.Generator().manual_seed(seed)
        was = self.generator.training
        self.generator.eval()
        images = self.generator(self.noise(len(labels), g), labels)
        self.generator.train(was)
        return images

    def label_of(self, name: str) -> int:
        names = self.config.class_names
        check(name in names, f"unknown class {name!r}; this GAN knows {', '.join(names)}")
        return names.index(name)

    # --- files: genlab.json (the config) and model.safetensors (the generator only) ----------

    def save(self, folder: Path, **info) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.generator.state_dict().items()}, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps({"kind": "gan", **dataclasses.asdict(self.config), **info}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "Gan":
        from ..store import load_weights

        folder = Path(folder).expanduser()
        path = folder / CONFIG_FILE
        meta = json.loads(path.read_text()) if path.is_file() else {}
        check(meta.get("kind") == "gan", f"{folder} is not a GAN model folder (genlab train gan writes one in --out/model)")
        names = {f.name for f in dataclasses.fields(GanConfig)}
        gan = cls(GanConfig(**{k: v for k, v in meta.items() if k in names}))
        gan.generator.load_state_dict(load_weights(folder / WEIGHTS_FILE))
        gan.info = {k: v for k, v in meta.items() if k not in names}
        return gan.eval().requires_grad_(False)

    @classmethod
    def bundled(cls) -> "Gan":
        return cls.load(bundled_weights("digits-gan", "genlab train gan --out runs/gan"))

