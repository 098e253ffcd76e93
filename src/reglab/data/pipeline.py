"""The training data path as a tensor pipeline (airbench's design).

The whole data set stays uint8 (N, 3, 32, 32) on the training device. Each batch is indexed out
of it, converted to float, normalised with the CIFAR-10 channel statistics, resized (bilinear) and
augmented as one tensor: no per-image Python, no DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from reglab.data.cifar10 import MEAN, STD


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, zero mean and unit variance per channel."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )


def batch_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def batch_crop(x: torch.Tensor, pad: int, generator: torch.Generator, mode: str) -> torch.Tensor:
    """Random crop of each image after padding by ``pad`` pixels on every side.

    mode "zeros" pads with zeros (after normalisation: the mean colour), "reflect" mirrors the
    border (airbench's translate). Offsets are uniform in [0, 2 * pad], drawn per image.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect" if mode == "reflect" else "constant")
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1)).view(n, 1, h, 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1)).view(n, 1, 1, w)
    # gather rows then columns: two cheap gathers instead of a per-image loop
    padded = padded.gather(2, rows.expand(n, c, h, w + 2 * pad))
    return padded.gather(3, cols.expand(n, c, h, w))


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """Apply an augmentation preset to a normalised 32x32 batch (before resizing)."""
    if augment == "none":
        return x
    if augment in ("flip", "flip-crop", "flip-translate"):
        x = batch_flip(x, generator)
    if augment == "flip-crop":
        x = batch_crop(x, 4, generator, mode="zeros")
    elif augment == "flip-translate":
        x = batch_crop(x, 2, generator, mode="reflect")
    return x


class BatchPipeline:
    """Shuffled batches of (images, labels) ready for the model, on ``device``.

    An epoch is a random permutation of the training set (seeded), cut into ``batch_size`` batches;
    the last partial batch is dropped so every step sees the same number of images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        image_size: int,
        augment: str = "none",
        device: torch.device | str = "cpu",
        seed: int = 0,
        channels_last: bool = False,
    ):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.image_size = image_size
        self.augment = augment
        self.channels_last = channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.steps_per_epoch = len(self.images) // batch_size

    def prepare(self, images: torch.Tensor, augment: str = "none") -> torch.Tensor:
        x = normalize(images)
        x = augment_batch(x, augment, self.generator)
        x = resize(x, self.image_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.steps_per_epoch * self.batch_size
        order = torch.randperm(len(self.images), device=self.device, generator=self.generator)[:n]
        for idx in order.view(self.steps_per_epoch, self.batch_size):
            yield self.prepare(self.images[idx], self.augment), self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches forever, epoch after epoch."""
        while True:
            yield from self.epoch()

    def eval_batches(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented batches of a fixed set (validation), in order, the last one partial."""
        images, labels = images.to(self.device), labels.to(self.device)
        for i in range(0, len(images), batch_size):
            yield self.prepare(images[i : i + batch_size]), labels[i : i + batch_size]
