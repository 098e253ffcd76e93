"""A small fast network in the style of airbench (Keller Jordan, cifar10-airbench).

Layout: a frozen 2x2 patch-whitening conv (initialised from the data by ``init_from_data``),
then three conv groups (conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU), a final
max-pool, and a bias-free linear classifier whose output is scaled down (airbench's 1/9) so the
initial logits are small. The default widths, 32/64/128, are half, a quarter and half of
airbench94's (64/256/256; about 1/7 of its parameters), so that a 2-core CPU trains it to 80% in
minutes; pass ``widths=(64, 256, 256)`` (``--widths 64,256,256``) for the original.
"""

from __future__ import annotations

import torch
from torch import nn

from reglab.models.registry import register_model

# GELU is airbench's. ReLU's forward and backward are cheaper, but on cpu90 it cost 0.4-0.75
# points of holdout accuracy (BENCHMARKS.md, the screens of cpu90).
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class ConvGroup(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, block_dropout: float = 0.0,
                 activation: str = "gelu"):  # fmt: skip
        act = ACTIVATIONS[activation]
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(out_channels, momentum=0.4),
            act(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=0.4),
            act(),
        )
        if block_dropout > 0:  # appended last, so the layers' names do not move
            self.append(nn.Dropout2d(block_dropout))


class AirbenchNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        dropout: float = 0.0,
        widths: tuple[int, int, int] = (32, 64, 128),
        whiten_width: int = 24,
        logit_scale: float = 1 / 9,
        block_dropout: float = 0.0,  # Dropout2d at the end of each conv group
        activation: str = "gelu",  # a key of ACTIVATIONS
    ):
        super().__init__()
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from data, then frozen (airbench)
        self.act = ACTIVATIONS[activation]()
        self.layers = nn.Sequential(
            ConvGroup(whiten_width, widths[0], block_dropout, activation),
            ConvGroup(widths[0], widths[1], block_dropout, activation),
            ConvGroup(widths[1], widths[2], block_dropout, activation),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = logit_scale
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m is not self.whiten:
                # Dirac-identity init on the first in-channels (airbench): the net starts close to
                # passing the whitened input through, which speeds up early training.
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                w = m.weight.data
                n = min(w.shape[0], w.shape[1])
                nn.init.dirac_(w[:n])

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening conv from normalised images (N, 3, H, W): ZCA-like filters over 2x2
        patches (eigenvectors scaled by 1/sqrt(eigenvalue + eps), and their negatives)."""
        c, k = images.shape[1], self.whiten.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)
        patches = patches.transpose(1, 3).reshape(-1, c, k, k)
        patches = patches.flatten(start_dim=1)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = eigenvectors.reshape(c * k * k, c, k, k) / torch.sqrt(eigenvalues + eps).view(
            -1, 1, 1, 1
        )
        half = self.whiten.weight.shape[0] // 2
        w = torch.cat([filters[:half], -filters[:half]])
        self.whiten.weight.copy_(w.to(self.whiten.weight))
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.layers(x)
        x = self.pool(x).flatten(1)
        return self.fc(self.dropout(x)) * self.logit_scale


@register_model("airbench", min_image_size=16)
def airbench_net(
    num_classes: int = 10,
    dropout: float = 0.0,
    widths: tuple[int, int, int] = (32, 64, 128),
    activation: str = "gelu",
    **kwargs,
) -> AirbenchNet:
    """The small airbench (widths 32/64/128; --widths sets others): quick's and cpu90's network."""
    return AirbenchNet(num_classes=num_classes, dropout=dropout, widths=tuple(widths),
                       activation=activation, **kwargs)  # fmt: skip


@register_model("airbench94", min_image_size=16)
def airbench94_net(widths: tuple[int, int, int] = (64, 256, 256), activation: str = "gelu",
                   **kwargs) -> AirbenchNet:  # fmt: skip
    """airbench94's widths (64/256/256; --widths sets others): gpu's and cpu94's network."""
    return airbench_net(widths=widths, activation=activation, **kwargs)
