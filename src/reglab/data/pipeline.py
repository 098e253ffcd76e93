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


NORMALIZATIONS = ("dataset", "per-image")


def per_image_standardize(pixels: torch.Tensor) -> torch.Tensor:
    """``tf.image.per_image_standardization`` of each image of a float (N, C, H, W) batch.

    (x - mean) / max(std, 1 / sqrt(C·H·W)), mean and population std over all of one image's values
    (channels together): the tutorial's input normalisation.
    """
    n = pixels[0].numel()
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    std = pixels.std(dim=(1, 2, 3), keepdim=True, correction=0)
    return (pixels - mean) / std.clamp_min(n**-0.5)


def resize(x: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Bilinear resize to ``size`` x ``size``; ``antialias`` filters before shrinking."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
    )


def batch_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def alternating_flip(first: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's alternating flip: which images to mirror in ``epoch`` (0-based), given a bool
    per image for epoch 0 (drawn at random once). Every other epoch mirrors the other half, so
    each image is seen both ways in every two consecutive epochs."""
    return first ^ bool(epoch % 2)


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


def batch_random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` window of each image, offsets uniform and drawn per image."""
    n, c, h, w = x.shape
    dy = torch.randint(0, h - size + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, w - size + 1, (n,), device=x.device, generator=generator)
    rows = (torch.arange(size, device=x.device).view(1, size) + dy.view(n, 1)).view(n, 1, size, 1)
    cols = (torch.arange(size, device=x.device).view(1, size) + dx.view(n, 1)).view(n, 1, 1, size)
    x = x.gather(2, rows.expand(n, c, size, w))
    return x.gather(3, cols.expand(n, c, size, size))


def batch_cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Set a ``size`` x ``size`` square of each image to 0, the mean colour after normalisation
    (DeVries & Taylor 2017). The centre is uniform over the image, so the square may be clipped
    by the border, as in the paper."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=generator) - size // 2
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=generator) - size // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= cy) & (rows < cy + size)  # (n, h)
    in_cols = (cols >= cx) & (cols < cx + size)  # (n, w)
    return x.masked_fill(in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w), 0.0)


def batch_color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
) -> torch.Tensor:
    """Random brightness, contrast and saturation (in that order) of normalised images.

    Works on [0, 1] pixels (normalisation undone, then redone), with one factor per image and
    property drawn uniformly from [1 − s, 1 + s] (torchvision's ColorJitter convention):
    brightness scales the pixels, contrast blends with the image's mean grey, saturation with its
    grey image; pixels are clipped to [0, 1] after each.
    """
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    grey_weights = torch.tensor((0.299, 0.587, 0.114), device=x.device).view(1, 3, 1, 1)
    n = x.shape[0]

    def factor(spread: float) -> torch.Tensor:
        u = torch.rand(n, device=x.device, generator=generator)
        return (1 + spread * (2 * u - 1)).view(n, 1, 1, 1)

    p = x * std + mean
    p = (p * factor(brightness)).clamp(0, 1)
    f = factor(contrast)
    grey_mean = (p * grey_weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    p = (f * p + (1 - f) * grey_mean).clamp(0, 1)
    f = factor(saturation)
    p = (f * p + (1 - f) * (p * grey_weights).sum(1, keepdim=True)).clamp(0, 1)
    return (p - mean) / std


def batch_brightness_contrast(
    x: torch.Tensor, generator: torch.Generator, brightness: float, contrast: float
) -> torch.Tensor:
    """hiverge's cifar10-speedrun colour jitter, on normalised images: x ← (x + b) · c with, per
    image, a shift b ~ U(−brightness, brightness) and a scale c ~ U(1 − contrast, 1 + contrast),
    in units of the channels' standard deviations (no clipping: the inputs are not pixels)."""
    n = x.shape[0]
    b = (2 * torch.rand(n, device=x.device, generator=generator) - 1) * brightness
    c = 1 + (2 * torch.rand(n, device=x.device, generator=generator) - 1) * contrast
    return (x + b.view(n, 1, 1, 1)) * c.view(n, 1, 1, 1)


# hiverge's cifar10-speedrun (brightness_range, contrast_range), tuned with its 7.6 epochs
JITTER_BRIGHTNESS, JITTER_CONTRAST = 0.1399, 0.1308
CUTOUT_SIZE = 16  # pixels of the 32-px image (DeVries & Taylor's CIFAR-10 setting)


def augment_batch(
    x: torch.Tensor, augment: str, generator: torch.Generator, image_size: int | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply an augmentation preset to a normalised 32x32 batch (before resizing).

    none; flip (mirror, p = 1/2); flip-crop (flip, pad 4 with the mean colour, random 32 crop);
    flip-translate (flip, reflect-pad 2, random crop); altflip-translate (the images ``flip``
    marks mirrored, see :func:`alternating_flip`, then translate as flip-translate);
    altflip-translate-jitter (then :func:`batch_brightness_contrast` at hiverge's ranges); cutout
    (flip-crop, then a 16x16 square set to the mean colour); tutorial (the tutorial's chapter:
    resize to 1.25 x ``image_size``, a random ``image_size`` crop, flip, colour jitter of
    brightness, contrast and saturation 0.4; at the tutorial's 96 px: resize to 120, crop 96).
    Only tutorial returns ``image_size`` pixels (default: the input's side); the others keep 32
    and leave resizing to the pipeline.
    """
    if augment == "none":
        return x
    if augment == "tutorial":
        size = image_size or x.shape[-1]
        x = batch_random_crop(resize(x, round(1.25 * size)), size, generator)
        return batch_color_jitter(batch_flip(x, generator), generator)
    if augment in ("flip", "flip-crop", "flip-translate", "cutout"):
        x = batch_flip(x, generator)
    if augment.startswith("altflip"):
        if flip is None:
            raise ValueError("altflip-translate needs the batch's flip mask")
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if augment in ("flip-crop", "cutout"):
        x = batch_crop(x, 4, generator, mode="zeros")
    elif augment == "flip-translate" or augment.startswith("altflip"):
        x = batch_crop(x, 2, generator, mode="reflect")
    if augment == "altflip-translate-jitter":
        x = batch_brightness_contrast(x, generator, JITTER_BRIGHTNESS, JITTER_CONTRAST)
    if augment == "cutout":
        x = batch_cutout(x, CUTOUT_SIZE, generator)
    return x


def full_batches(n_images: int, batch_size: int) -> int:
    """The steps of an epoch: the full batches of ``batch_size`` in ``n_images``. The last
    partial batch is dropped (torch's ``drop_last``, as airbench), so every step sees
    ``batch_size`` images."""
    return n_images // batch_size


class BatchPipeline:
    """Shuffled batches of (images, labels) ready for the model, on ``device``.

    An epoch is a random permutation of the training set (seeded), cut into ``batch_size``
    batches; the last partial batch is dropped so every step sees the same number of images.
    The pipeline's random state (its generator, the epoch's permutation and the position in it)
    is :meth:`state_dict`, so a resumed run draws exactly the batches the uninterrupted run
    would have drawn.

    Data-parallel (``shard = (rank, world_size)``): ``batch_size`` is the *global* batch; every
    process draws the same permutation and the same augmentation of the whole global batch and
    keeps rows ``rank::world_size`` of it, so N processes see together exactly the batch one
    process would (at the price of preparing the global batch on each).
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
        normalization: str = "dataset",
        shard: tuple[int, int] = (0, 1),
        low_res: tuple[int, int] = (0, 0),
    ):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.image_size = image_size
        self.augment = augment
        self.channels_last = channels_last
        self.normalization = normalization
        self.rank, self.world_size = shard
        if batch_size % self.world_size:
            raise ValueError(f"batch {batch_size} does not split over {self.world_size} processes")
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.steps_per_epoch = full_batches(len(self.images), batch_size)
        # progressive resizing: the first low_res_batches batches at low_res_size pixels
        self.low_res_batches, self.low_res_size = low_res
        self.order: torch.Tensor | None = None  # this epoch's batches of indices
        self.position = 0  # next batch of this epoch
        self.epoch = -1  # epochs begun, less one (alternating flip's parity)
        self.first_flip: torch.Tensor | None = None  # altflip: the images mirrored in epoch 0
        if augment.startswith("altflip"):
            self.first_flip = torch.rand(len(self.images), device=self.device,
                                         generator=self.generator) < 0.5  # fmt: skip

    def prepare(
        self, images: torch.Tensor, augment: str = "none", flip: torch.Tensor | None = None,
        size: int | None = None,
    ) -> torch.Tensor:
        """Normalised, augmented and resized to ``size`` (progressive resizing's early steps:
        straight from the augmented images, antialiased when that shrinks them) or else the
        image size."""
        x = normalize(images)
        x = augment_batch(x, augment, self.generator, self.image_size, flip)
        if size is None:
            x = resize(x, self.image_size)
        else:
            x = resize(x, size, antialias=size < x.shape[-1])
        if self.normalization == "per-image":  # back to pixels (0-255), then per image
            mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
            std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
            x = per_image_standardize(x * std + mean)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch (this process's share of it), a new epoch when one ends."""
        if self.order is None or self.position == self.steps_per_epoch:
            n = self.steps_per_epoch * self.batch_size
            perm = torch.randperm(len(self.images), device=self.device, generator=self.generator)
            self.order = perm[:n].view(self.steps_per_epoch, self.batch_size)
            self.position = 0
            self.epoch += 1
        idx = self.order[self.position]
        low_res = self.epoch * self.steps_per_epoch + self.position < self.low_res_batches
        self.position += 1
        flip = None
        if self.first_flip is not None:
            flip = alternating_flip(self.first_flip[idx], self.epoch)
        size = self.low_res_size if low_res else None
        x, y = self.prepare(self.images[idx], self.augment, flip, size), self.labels[idx]
        if self.world_size > 1:
            x, y = x[self.rank :: self.world_size], y[self.rank :: self.world_size]
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches forever, epoch after epoch."""
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, torch.Tensor | int | None]:
        return {
            "generator": self.generator.get_state(),
            "order": None if self.order is None else self.order.cpu(),
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        order = state["order"]
        self.order = None if order is None else order.to(self.device)
        self.position = int(state["position"])
        self.epoch = int(state.get("epoch", -1))  # checkpoints before altflip had none

    def eval_batches(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented batches of a fixed set (validation), in order, the last one partial."""
        images, labels = images.to(self.device), labels.to(self.device)
        for i in range(0, len(images), batch_size):
            yield self.prepare(images[i : i + batch_size]), labels[i : i + batch_size]
