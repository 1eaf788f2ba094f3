"""Image data sets that need no download: Fashion-MNIST, scikit-learn digits, user folders.

``load_images(source, image_size)`` returns an :class:`ImageData`. ``source`` is one of:

- ``"fashion-mnist"``: Debian's ``dataset-fashion-mnist`` files (``apt-get install
  dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``);
- ``"digits"``: scikit-learn's bundled 8×8 digits (1797 images);
- ``"auto"``: Fashion-MNIST when installed, else digits;
- a directory the user already has: MNIST-format idx files (also torchvision's
  ``MNIST/raw`` or ``FashionMNIST/raw`` layout), torchvision's CIFAR-10/100 folders, or an
  ``ImageFolder`` tree (``DIR/train`` and ``DIR/test`` or ``DIR/val``, else ``DIR`` alone).

Nothing is ever downloaded. Images come out as float tensors (3, size, size),
standardised with the training set's mean and standard deviation.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SOURCES = ("auto", "fashion-mnist", "digits")
CHANNELS = 3  # torchvision's ResNet-18 takes RGB; grey images are repeated


class TensorImages(torch.utils.data.Dataset):
    """Images held in memory as (N, C, H, W) uint8 or float with integer labels (N,).

    Batches are made on the fly: resized to ``size``, standardised by (``mean``, ``std``),
    channels repeated to 3.
    """

    def __init__(self, images, labels, size, mean=None, std=None):
        self.images, self.labels, self.size = images, labels.long(), int(size)
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        self.scale = scale
        if mean is None:
            sample = images[: min(len(images), 5000)].double() / scale
            mean, std = float(sample.mean()), float(sample.std())
        self.mean, self.std = mean, std

    def __len__(self):
        return len(self.labels)

    def batch(self, idx):
        """(x (B, 3, size, size) float32, y (B,) int64) for an index array."""
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        x = self.images[idx].float() / self.scale
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        if x.shape[1] != CHANNELS:
            x = x.expand(-1, CHANNELS, -1, -1)
        return x.contiguous(), self.labels[idx]

    def __getitem__(self, i):
        x, y = self.batch([i])
        return x[0], y[0]


@dataclass
class ImageData:
    """A classification data set: ``train``/``test`` datasets of (x (3, s, s), y) pairs."""

    name: str
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset | None
    num_classes: int
    image_size: int


def get_batch(dataset, idx):
    """Stack the examples ``idx`` of any map-style dataset into (x, y) tensors."""
    if hasattr(dataset, "batch"):
        return dataset.batch(idx)
    if isinstance(dataset, torch.utils.data.TensorDataset):
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return tuple(t[idx] for t in dataset.tensors)
    items = [dataset[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def fixed_batches(dataset, n, batch_size, seed, device="cpu"):
    """The fixed subset of the first ``n`` examples of a seeded permutation, as a list of
    (x, y) batches on ``device`` (for Hessian-vector products and noise estimates)."""
    n = min(int(n), len(dataset))
    idx = np.random.default_rng(seed).permutation(len(dataset))[:n]
    return [tuple(t.to(device) for t in get_batch(dataset, idx[i:i + batch_size]))
            for i in range(0, n, batch_size)]


def _read_idx(path):
    """An idx (MNIST format) file, gzipped or not, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if dtype_code != 0x08:
        raise UserError(f"{path}: only unsigned-byte idx files are supported")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_folder(folder):
    """The folder holding MNIST-format files under ``folder`` (itself or */raw), or None."""
    for cand in (folder, folder / "FashionMNIST" / "raw", folder / "MNIST" / "raw"):
        if _find(cand, "train-images-idx3-ubyte"):
            return cand
    return None


def _load_idx(folder, size, name):
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img, lab = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
        if img is None or lab is None:
            if split == "train":
                raise UserError(f"data: {folder} lacks {prefix}-images/labels idx files")
            continue
        parts[split] = (torch.from_numpy(_read_idx(img).copy())[:, None],
                        torch.from_numpy(_read_idx(lab).astype(np.int64)))
    train = TensorImages(*parts["train"], size)
    test = TensorImages(*parts["test"], size, train.mean, train.std) if "test" in parts else None
    return ImageData(name, train, test, int(parts["train"][1].max()) + 1, size)


def _load_digits(size, seed=0):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).float()[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    n_train = int(0.8 * len(labels))
    tr, te = perm[:n_train], perm[n_train:]
    train = TensorImages(images[tr], labels[tr], size)
    return ImageData("digits", train, TensorImages(images[te], labels[te], size, train.mean,
                                                   train.std), 10, size)


def _load_cifar(folder, size):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if (folder / "cifar-10-batches-py").is_dir() else \
        torchvision.datasets.CIFAR100
    parts = [cls(str(folder), train=t, download=False) for t in (True, False)]
    tensors = [(torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous(),
                torch.as_tensor(p.targets)) for p in parts]
    train = TensorImages(*tensors[0], size)
    return ImageData(cls.__name__.lower(), train, TensorImages(*tensors[1], size, train.mean,
                                                                train.std),
                     len(parts[0].classes), size)


def _load_image_folder(folder, size):
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train_dir = folder / "train" if (folder / "train").is_dir() else folder
    test_dir = next((folder / s for s in ("test", "val") if (folder / s).is_dir()), None)
    train = torchvision.datasets.ImageFolder(str(train_dir), transform=tf)
    test = torchvision.datasets.ImageFolder(str(test_dir), transform=tf) if test_dir else None
    return ImageData(f"imagefolder:{folder.name}", train, test, len(train.classes), size)


def load_images(source="auto", image_size=16, seed=0):
    """The :class:`ImageData` for ``source`` (see the module docstring); never downloads."""
    if image_size < 4:
        raise UserError(f"image_size must be at least 4, got {image_size}")
    if source == "auto":
        source = "fashion-mnist" if _idx_folder(FASHION_MNIST_DIR) else "digits"
    if source == "digits":
        return _load_digits(image_size, seed)
    if source == "fashion-mnist":
        if not _idx_folder(FASHION_MNIST_DIR):
            raise UserError(f"data: Fashion-MNIST not found in {FASHION_MNIST_DIR} "
                            "(apt-get install dataset-fashion-mnist, or use data = digits)")
        return _load_idx(FASHION_MNIST_DIR, image_size, "fashion-mnist")
    folder = Path(source)
    if not folder.is_dir():
        raise UserError(f"data must be one of {', '.join(SOURCES)} or an existing directory, "
                        f"got {source!r}")
    idx = _idx_folder(folder)
    if idx:
        return _load_idx(idx, image_size, f"idx:{folder.name}")
    if (folder / "cifar-10-batches-py").is_dir() or (folder / "cifar-100-python").is_dir():
        return _load_cifar(folder, image_size)
    try:
        return _load_image_folder(folder, image_size)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"data: {folder} is no known dataset layout ({exc})".replace("\n", " ")) \
            from None
