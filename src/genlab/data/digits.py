"""Image datasets: scikit-learn's handwritten digits, or any folder of pictures.

Both become one tensor of images in [-1, 1] plus integer labels and their names, small
enough to sit in memory, which is all a 2-core machine can train on anyway.

    data = load_images("digits", resolution=16)   # data.x: (1437, 1, 16, 16), data.labels: (1437,)
    data = load_images("~/pictures/cats")         # labels from subfolder names, if any
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import check

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS_TRAIN = 1437  # sklearn's 1797 digits: the first 1437 train, the last 360 are held out for evaluation


@dataclass
class ImageData:
    x: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64, indices into class_names
    class_names: list[str]  # empty when the folder has no subfolders: an unconditional dataset


def load_images(source: str, resolution: int | None = None, split: str = "train") -> ImageData:
    """`source` is "digits" or a folder. `resolution` resizes every image to a square of that side."""
    check(resolution is None or 4 <= resolution <= 1024, f"--resolution must be between 4 and 1024, got {resolution}")
    if source == "digits":
        return digits(resolution or 16, split)
    return folder(Path(source).expanduser(), resolution)


def digits(resolution: int = 16, split: str = "train") -> ImageData:
    """scikit-learn's 8x8 digits (pixel values 0..16), upsampled bilinearly to resolution x resolution."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    check(split in ("train", "test", "all"), f"split must be train, test or all, got {split!r}")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # (1797, 1, 8, 8) in [-1, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    part = {"train": slice(0, DIGITS_TRAIN), "test": slice(DIGITS_TRAIN, None), "all": slice(None)}[split]
    x, y = x[part], y[part]
    if resolution != 8:
        x = enlarge(x, resolution)
    return ImageData(x, y, [str(i) for i in range(10)])


def enlarge(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) in [-1, 1] -> (B, C, size, size), bilinearly: how digits() makes its 16x16 digits
    from the 8x8 originals, and how a model that denoises at 8x8 shows its samples (denoiser.py)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)


def folder(root: Path, resolution: int | None) -> ImageData:
    """Every image under `root`; a file in root/NAME/ gets the label NAME."""
    from PIL import Image

    from ..image.canvas import from_pil, open_image

    check(root.is_dir(), f"--data must be 'digits' or a folder of images; {str(root)!r} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    check(files, f"no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    subfolders = sorted({p.parent.relative_to(root).parts[0] for p in files if p.parent != root})
    check(not subfolders or all(p.parent != root for p in files),
          f"{root} mixes images at its top level with class subfolders; put every image in a subfolder, or none")
    pictures = []  # RGB at the training size: resized as they are read, so a folder of photos fits in memory
    for p in files:
        im = open_image(p, "image")
        if resolution is not None:
            im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)
        pictures.append(im)
    sizes = {im.size for im in pictures}
    check(len(sizes) == 1, f"the images in {root} have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}); "
          "pass --resolution N to resize them all to N x N")
    grey = all(_is_grey(im) for im in pictures)
    x = torch.cat([from_pil(im.convert("L") if grey else im) for im in pictures])  # (N, C, H, W) in [-1, 1]
    labels = [subfolders.index(p.parent.relative_to(root).parts[0]) if subfolders else 0 for p in files]
    return ImageData(x, torch.tensor(labels), subfolders)


def _is_grey(im) -> bool:
    r, g, b = im.split()
    return r.tobytes() == g.tobytes() == b.tobytes()
