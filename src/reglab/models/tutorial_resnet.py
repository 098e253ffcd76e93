"""The bottleneck ResNet of a classic TensorFlow tutorial (CIFAR-10 resized to 96x96).

Layout (shapes for a 96x96 input, NCHW inside, the tutorial printed NHWC):

* ``block1``: 5x5 conv, 32 channels, stride 2 -> BN -> ReLU            (96 -> 48)
* ``pool``: 3x3 max-pool, stride 2, SAME                                 (48 -> 24)
* ``block2``: 2 bottleneck units, inner width 32, out 128                (24)
* ``block3``: 2 units, inner 64, out 256, the first with stride 2        (24 -> 12)
* ``block4``: 2 units, inner 128, out 512, the first with stride 2       (12 -> 6)
* global average pool -> ``dropout`` (identity when 0) -> ``fc`` ("classification")

Padding is TensorFlow's SAME everywhere. For a stride-2 window on an even input TF pads one more
pixel on the bottom/right than on the top/left (PyTorch's ``padding=`` is symmetric), so the 5x5
stem, the 3x3 convs and the max-pool get an explicit :class:`TFSamePad` in front of an unpadded
layer. As in TF, a strided 3x3/5x5 window on an even input is then centred on pixels 1, 3, 5, ...
(the stride-1 SAME output sampled at ``[1::2]``), while the 1x1 strided projection and the
subsampled identity ``x[:, :, ::s, ::s]`` take pixels 0, 2, 4, ...; symmetric PyTorch padding
would centre both on the even pixels and so not reproduce the tutorial.

Batch norm and init are tf-slim's defaults, which the tutorial's layers inherited (its arg_scope
set only the activation, the normalizer and the regularizer):

* ``slim.batch_norm(decay=0.999, center=True, scale=False, epsilon=0.001)``: a shift β but no
  scale γ (:class:`SlimBatchNorm2d`), eps 1e-3, running statistics with PyTorch momentum 0.001;
* ``slim.conv2d`` / ``slim.fully_connected``: weights ``xavier_initializer()`` (Glorot uniform),
  biases zeros. Convs carry no bias (each is followed by batch norm); the linear layer has one.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from reglab.models.registry import register_model

# Input side the tutorial used; only the shape printout depends on it, the net takes any side.
TUTORIAL_IMAGE_SIZE = 96


def tf_same_padding(in_size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """Return ``(before, after)`` padding of one spatial side as TensorFlow's SAME computes it.

    ``pad = max((ceil(in / s) - 1) * s + k - in, 0)``, ``before = pad // 2``, ``after = pad -
    before``: the odd pixel goes after (bottom/right). E.g. in=96, k=5, s=2 -> (1, 2).
    """
    out_size = math.ceil(in_size / stride)
    pad = max((out_size - 1) * stride + kernel_size - in_size, 0)
    return pad // 2, pad - pad // 2


class TFSamePad(nn.Module):
    """Pad an NCHW tensor as TF SAME would for a ``kernel_size`` window with ``stride``.

    Computed from the actual input size at each call, so the network accepts any image size.
    ``value`` is the fill: 0 before a conv, ``-inf`` before a max-pool (TF never lets padding win).
    """

    def __init__(self, kernel_size: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size, self.stride)
        left, right = tf_same_padding(x.shape[-1], self.kernel_size, self.stride)
        if top == bottom == left == right == 0:
            return x
        # F.pad takes the last dimension first: (left, right, top, bottom).
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, value={self.value}"


class SlimBatchNorm2d(nn.BatchNorm2d):
    """tf-slim's default ``batch_norm``: centre (β) but no scale (γ), eps 1e-3, decay 0.999.

    TF's ``decay`` weighs the old running statistic, PyTorch's ``momentum`` the new batch's:
    decay 0.999 is momentum 0.001.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features, eps=1e-3, momentum=1e-3)
        self.register_parameter("weight", None)  # scale=False: F.batch_norm takes weight=None


class Bottleneck(nn.Module):
    """One bottleneck unit: 1x1 -> BN -> ReLU, 3x3 (stride) -> BN -> ReLU, 1x1 -> BN, + shortcut.

    The shortcut is the input subsampled by the stride (``x[:, :, ::s, ::s]``) when the channel
    count is unchanged, else a strided 1x1 conv followed by BN (``self.shortcut``; ``None`` for
    the identity). Output: ``relu(shortcut + residual)``.
    """

    def __init__(
        self,
        in_channels: int,
        inner_channels: int,
        out_channels: int,
        stride: int = 1,
        block_dropout: float = 0.0,
    ):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, inner_channels, 1, bias=False)
        self.bn1 = SlimBatchNorm2d(inner_channels)
        self.pad2 = TFSamePad(3, stride)
        self.conv2 = nn.Conv2d(inner_channels, inner_channels, 3, stride=stride, bias=False)
        self.bn2 = SlimBatchNorm2d(inner_channels)
        self.conv3 = nn.Conv2d(inner_channels, out_channels, 1, bias=False)
        self.bn3 = SlimBatchNorm2d(out_channels)
        self.shortcut: nn.Sequential | None = None
        if in_channels != out_channels:
            # A 1x1 window never needs SAME padding (pad = max((ceil(n/s)-1)*s + 1 - n, 0) = 0).
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=SlimBatchNorm2d(out_channels),
                )
            )
        # after the 3x3 conv, before the expanding 1x1; whole channels (Dropout2d)
        self.drop = nn.Dropout2d(block_dropout) if block_dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        else:
            shortcut = self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.pad2(out))))
        if self.drop is not None:
            out = self.drop(out)
        out = self.bn3(self.conv3(out))
        return F.relu(shortcut + out)


def _stage(
    in_channels: int, inner: int, out: int, stride: int, units: int = 2, block_dropout: float = 0.0
) -> nn.Sequential:
    """``units`` bottlenecks; only the first carries the stride and the channel change."""
    layers = [Bottleneck(in_channels, inner, out, stride, block_dropout)]
    layers += [Bottleneck(out, inner, out, 1, block_dropout) for _ in range(units - 1)]
    return nn.Sequential(*layers)


@register_model("tutorial-resnet", min_image_size=32)
class TutorialResNet(nn.Module):
    """The tutorial's bottleneck ResNet (see the module docstring for the layout and init).

    Args:
        num_classes: outputs of the final linear layer.
        dropout: probability of the dropout before ``fc``; 0 puts an ``nn.Identity`` there.
        verbose: print the tutorial's shape lines (NHWC) on the first forward, once.
        block_dropout: probability of the Dropout2d inside every bottleneck (0: none).
    """

    def __init__(
        self,
        num_classes: int = 10,
        dropout: float = 0.0,
        verbose: bool = False,
        block_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.verbose = verbose
        self._shapes_printed = False  # plain attribute: not saved in state_dict
        self.block1 = nn.Sequential(
            OrderedDict(
                pad=TFSamePad(5, 2),
                conv=nn.Conv2d(3, 32, 5, stride=2, bias=False),
                bn=SlimBatchNorm2d(32),
                relu=nn.ReLU(inplace=True),
            )
        )
        self.pool = nn.Sequential(
            OrderedDict(pad=TFSamePad(3, 2, value=float("-inf")), pool=nn.MaxPool2d(3, 2))
        )
        self.block2 = _stage(32, 32, 128, stride=1, block_dropout=block_dropout)
        self.block3 = _stage(128, 64, 256, stride=2, block_dropout=block_dropout)
        self.block4 = _stage(256, 128, 512, stride=2, block_dropout=block_dropout)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(512, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """tf-slim's defaults: Glorot uniform weights, zero biases and β."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.zeros_(m.bias)

    def forward_with_shapes(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[str, tuple[int, ...]]]]:
        """Forward pass that also returns the tutorial's named shapes, in NHWC order."""
        shapes: list[tuple[str, tuple[int, ...]]] = []

        def record(name: str, t: torch.Tensor) -> None:
            # NCHW -> NHWC, the order TensorFlow (and so the tutorial) printed.
            dims = tuple(t.shape)
            shapes.append((name, (dims[0], *dims[2:], dims[1]) if t.dim() == 4 else dims))

        record("input", x)
        x = self.block1(x)
        record("block1", x)  # stem output, before the max-pool
        x = self.block2(self.pool(x))
        record("block2", x)
        x = self.block3(x)
        record("block3", x)
        x = self.block4(x)
        record("block4", x)
        x = self.fc(self.dropout(self.avgpool(x).flatten(1)))
        record("classification", x)
        return x, shapes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.verbose and not self._shapes_printed:
            self._shapes_printed = True
            out, shapes = self.forward_with_shapes(x)
            print(format_shapes(shapes))
            return out
        x = self.block2(self.pool(self.block1(x)))
        x = self.block4(self.block3(x))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


def format_shapes(shapes: list[tuple[str, tuple[int, ...]]]) -> str:
    """The tutorial's printout: a header naming the layout, then one ``name (dims)`` per line."""
    lines = ["shapes (NHWC, as the tutorial printed them):"]
    lines += [f"{name} {dims}" for name, dims in shapes]
    return "\n".join(lines)


@torch.no_grad()
def tutorial_shapes(
    model: TutorialResNet, batch: torch.Tensor | int = 1, image_size: int = TUTORIAL_IMAGE_SIZE
) -> list[tuple[str, tuple[int, ...]]]:
    """Named NHWC shapes of a forward pass, without printing.

    ``batch`` is either an NCHW tensor or a batch size (then a zero batch of
    ``(batch, 3, image_size, image_size)`` is used). Runs in eval mode, so BN running statistics
    are not touched; the model's train/eval mode is restored afterwards.
    """
    if isinstance(batch, int):
        batch = torch.zeros(batch, 3, image_size, image_size)
    was_training = model.training
    model.eval()
    try:
        return model.forward_with_shapes(batch)[1]
    finally:
        model.train(was_training)
