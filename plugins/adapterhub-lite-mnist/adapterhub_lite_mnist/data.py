"""MNIST as in-memory tensors, with the corruptions the experiments use.

The data directory is `data_dir`, else $ADAPTERS_DATA, else a cache folder
where torchvision downloads MNIST (users with a network). torchvision is
imported only here, only when data is needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from adapterhub_lite import AdapterFileError, UnknownNameError

DEFAULT_DIR = Path.home() / ".cache" / "adapterhub_lite" / "data"


def data_root(data_dir: str | Path | None) -> tuple[Path, bool]:
    """(folder holding MNIST/raw, whether downloading is allowed)."""
    if data_dir is not None:
        return Path(data_dir), False
    if os.environ.get("ADAPTERS_DATA"):
        return Path(os.environ["ADAPTERS_DATA"]), False
    return DEFAULT_DIR, True


SPLITS = ("train", "val", "test")
VALIDATION = 5_000  # training images held out to choose recipes on
SPLIT_SEED = 0  # fixes which ones: the first VALIDATION of a seeded permutation of the 60,000
SPLIT_INFO = {"train": f"MNIST train minus {VALIDATION:,} held out (split seed {SPLIT_SEED})",
              "val": f"{VALIDATION:,} MNIST train images held out (split seed {SPLIT_SEED})",
              "test": "MNIST test (10,000)"}


def load_mnist(split: str, data_dir: str | Path | None = None,
               classes: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float in [0, 1] and labels (N,) of a split, optionally only some classes.

    "val" is held out of the 60,000 training images (a fixed seeded choice) and "train" is the rest, so a
    recipe chosen on "val" never saw "test"."""
    from torchvision.datasets import MNIST

    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    root, download = data_root(data_dir)
    try:
        ds = MNIST(str(root), train=(split != "test"), download=download)
    except (RuntimeError, OSError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise AdapterFileError(f"MNIST is not readable under {root} ({detail}); set ADAPTERS_DATA (or the data "
                               "folder option) to a folder containing MNIST/raw", option="data_dir") from exc
    images = ds.data.unsqueeze(1).float() / 255.0
    labels = ds.targets.clone()
    if split != "test":
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
        index = (order[VALIDATION:] if split == "train" else order[:VALIDATION]).sort().values  # original order
        images, labels = images[index], labels[index]
    if classes is not None:
        keep = torch.isin(labels, torch.tensor(classes))
        images, labels = images[keep], labels[keep]
    return images, labels


MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels to zero mean, unit variance, as the classifiers expect."""
    return (x - MEAN) / STD


def noisy(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The denoising classifier's corruption x*(1-a) + u*a, a ~ U(0,1) per sample, u ~ U(0,1) per pixel.
    Applied to normalized images: the digit keeps its contrast (about 3.2 units) against noise in [0, 1]."""
    a = torch.rand(x.shape[0], 1, 1, 1, generator=generator)
    u = torch.rand(x.shape, generator=generator)
    return x * (1 - a) + u * a


def invert(x: torch.Tensor) -> torch.Tensor:
    """White-on-black to black-on-white (the style the UNet adapter learns)."""
    return 1.0 - x


def pad32(x: torch.Tensor) -> torch.Tensor:
    """28x28 to 32x32 with background padding, as the UNet expects."""
    return F.pad(x, (2, 2, 2, 2))
