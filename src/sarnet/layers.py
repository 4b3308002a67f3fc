"""Layer-level pieces every SarNET model is built from, and the autoregressive loop over them.

- `SemiDenseStack`: SemiDense layers (semidense.py) with their activations, each fed the latent z if any;
- `generate_autoregressive`: fill patches one at a time, in two exact ways (docs/protocol.md "Sampling"):
  "naive" runs the whole stack over the whole image at each patch step (as the reference notebooks
  do, ~n_patches forward passes per image); "incremental" computes each layer's units of patch k
  once, as soon as their inputs are known. Units are reordered patch-major, so the inputs a patch
  may see are a prefix of its layer and each step is one small dense matmul per layer: an image
  costs about one (half-dense) forward pass.
- `WholeMapConv2d`, `PointMapConvTranspose2d`: the VAEs' convolutions whose kernel covers the whole map
  (7×7 kernel on a 7×7 map; a 7×7 transposed kernel on a 1×1 map), computed as the one matmul they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.errors import ConfigError
from sarnet.semidense import SemiDense

IMAGE_SIZE = 28
PIXELS = IMAGE_SIZE * IMAGE_SIZE
ACTIVATIONS = {"relu": F.relu, "sigmoid": torch.sigmoid, "none": lambda x: x}


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block, the caller's mode restored after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class WholeMapConv2d(nn.Conv2d):
    """Conv2d (stride 1, no padding) whose kernel covers its whole input map: each output channel is
    one dot product with the flattened map, computed as one matmul. Same parameters and state dict
    as nn.Conv2d; on 2 CPU cores oneDNN's kernel for a 7×7 map ran ~3× slower than the matmul."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.kernel_size:
            return super().forward(x)  # a larger map: a plain convolution
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]


class PointMapConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d (stride 1, no padding) fed 1×1 maps: the output is the kernels weighted by the
    input channels, one matmul (B, in) @ (in, out·k·k). Same parameters and state dict as
    nn.ConvTranspose2d; ~3× faster than oneDNN's kernel on 2 CPU cores for 128 → 64, k = 7."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (1, 1) or output_size is not None:
            return super().forward(x, output_size)
        maps = (x.flatten(1) @ self.weight.flatten(1)).view(len(x), self.out_channels, *self.kernel_size)
        return maps + self.bias[:, None, None]


@dataclass(frozen=True)
class LayerShape:
    """One side of a SemiDense layer: channels × size² pixels in patch² patches."""

    channels: int
    size: int
    patch: int


def hidden_shapes(spec: Sequence[Sequence[int]]) -> tuple[LayerShape, ...]:
    """[[channels, size, patch], ...] from params.yaml -> LayerShapes."""
    try:
        return tuple(LayerShape(*map(int, s)) for s in spec)
    except (TypeError, ValueError):
        raise ConfigError(f"hidden must be a list of [channels, size, patch] triples, got {spec!r}") from None


class SemiDenseStack(nn.Module):
    """SemiDense layers through `shapes` (the first of type a), each fed the latent z if any."""

    def __init__(self, shapes: Sequence[LayerShape], activations: Sequence[str], latent_dim: int = 0) -> None:
        super().__init__()
        if len(activations) != len(shapes) - 1:
            raise ConfigError(f"{len(shapes) - 1} layers need {len(shapes) - 1} activations, got {len(activations)}")
        unknown = set(activations) - set(ACTIVATIONS)
        if unknown:
            raise ConfigError(f"unknown activation(s) {sorted(unknown)}; choose from {sorted(ACTIVATIONS)}")
        self.shapes = tuple(shapes)
        self.activations = tuple(activations)
        self.latent_dim = latent_dim
        self.layers = nn.ModuleList(
            SemiDense(a.channels, b.channels, a.size, b.size, a.patch, b.patch, latent_dim=latent_dim, first=(i == 0))
            for i, (a, b) in enumerate(zip(shapes[:-1], shapes[1:]))
        )
        self.n_patches = self.layers[0].n_patches

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        for layer, act in zip(self.layers, self.activations):
            x = ACTIVATIONS[act](layer(x, z))
        return x

    def patch_pixels(self, patch: int) -> torch.Tensor:
        """Indices of the output units belonging to one patch (all channels)."""
        return (self.layers[-1].out_patch_index == patch).nonzero().squeeze(1)



# Maps the stack's raw output units of one patch (B, units) to the input units written back.
Emit = Callable[[torch.Tensor], torch.Tensor]


def threshold_emit(threshold: float, clip_high: bool = False) -> Emit:
    """Pixels below `threshold` become black (and above 1 white, if `clip_high`)."""
    def emit(values: torch.Tensor) -> torch.Tensor:
        values = torch.where(values < threshold, torch.zeros_like(values), values)
        return values.clamp(max=1.0) if clip_high else values
    return emit


def _offsets(patch_index: torch.Tensor, n_patches: int) -> list[int]:
    counts = torch.bincount(patch_index, minlength=n_patches)
    return [0, *torch.cumsum(counts, 0).tolist()]


class _PatchMajorLayer:
    """One SemiDense layer's weights cut into per-patch blocks over patch-major unit order.

    Activations are kept feature-major, (units, B): a patch's units are then contiguous rows, so
    each step accumulates in place into its rows of the output buffer with no copies."""

    def __init__(self, layer: SemiDense, activation: str, z: torch.Tensor | None, batch: int) -> None:
        in_order = torch.argsort(layer.in_patch_index, stable=True)
        out_order = torch.argsort(layer.out_patch_index, stable=True)
        weight = layer.masked_weight().detach()
        w_x = weight[:, : layer.in_features][out_order][:, in_order]
        self.in_offsets = _offsets(layer.in_patch_index, layer.n_patches)
        self.out_offsets = _offsets(layer.out_patch_index, layer.n_patches)
        self.blocks = []
        for k in range(layer.n_patches):
            # type (a): patch 0 sees patch 0, patch k>0 sees patches < k; type (b): patches <= k
            prefix = self.in_offsets[k] if (layer.first and k > 0) else self.in_offsets[k + 1]
            rows = slice(self.out_offsets[k], self.out_offsets[k + 1])
            self.blocks.append(w_x[rows, :prefix].contiguous())
        bias = layer.bias.detach()[out_order][:, None]
        # The output starts as bias (+ the latent part, the same at every step): one matmul up front.
        shift = bias if z is None else weight[:, layer.in_features :][out_order] @ z.t() + bias
        self.out = shift.expand(layer.out_features, batch).contiguous()
        self.activation = activation

    def step(self, k: int, h_in: torch.Tensor) -> None:
        """Units of patch k from the units of h_in this patch may see (a non-empty prefix)."""
        rows = self.out[self.out_offsets[k] : self.out_offsets[k + 1]]
        block = self.blocks[k]
        rows.addmm_(block, h_in[: block.shape[1]])
        if self.activation == "relu":
            rows.relu_()
        elif self.activation == "sigmoid":
            rows.sigmoid_()
        elif self.activation != "none":
            rows.copy_(ACTIVATIONS[self.activation](rows))


def _check_start(stack: SemiDenseStack, x0: torch.Tensor, first_patch: int) -> None:
    first, last = stack.layers[0], stack.layers[-1]
    if not 1 <= first_patch <= stack.n_patches:
        raise ConfigError(f"first_patch must be in 1..{stack.n_patches} (patch 0 is always given), got {first_patch}")
    if first.in_features != last.out_features or not torch.equal(first.in_patch_index, last.out_patch_index):
        raise ConfigError("autoregressive generation needs the stack's input and output layouts to match")
    if x0.dim() != 2 or x0.shape[1] != first.in_features:
        raise ConfigError(f"expected start images (B, {first.in_features}), got {tuple(x0.shape)}")


@torch.no_grad()
def _incremental(stack: SemiDenseStack, x0: torch.Tensor, z: torch.Tensor | None, first_patch: int, emit: Emit) -> torch.Tensor:
    layers = [_PatchMajorLayer(layer, act, z, len(x0)) for layer, act in zip(stack.layers, stack.activations)]
    order = torch.argsort(stack.layers[0].in_patch_index, stable=True)
    image = x0[:, order].t().contiguous()  # (units, B), patch-major
    buffers = [image] + [layer.out for layer in layers]
    offsets = layers[0].in_offsets
    for k in range(stack.n_patches):
        for i, layer in enumerate(layers):
            layer.step(k, buffers[i])
        if k >= first_patch:
            lo, hi = offsets[k], offsets[k + 1]
            image[lo:hi] = emit(buffers[-1][lo:hi].t()).t()  # emit works on (B, units)
    out = torch.empty_like(x0)
    out[:, order] = image.t()
    return out


@torch.no_grad()
def _naive(stack: SemiDenseStack, x0: torch.Tensor, z: torch.Tensor | None, first_patch: int, emit: Emit) -> torch.Tensor:
    x = x0.clone()
    patch_index = stack.layers[0].in_patch_index
    for k in range(first_patch, stack.n_patches):
        units = (patch_index == k).nonzero().squeeze(1)
        x[:, units] = emit(stack(x, z)[:, units])
    return x


def generate_autoregressive(stack: SemiDenseStack, x0: torch.Tensor, z: torch.Tensor | None = None,
                            first_patch: int = 1, threshold: float | None = None, method: str = "incremental",
                            emit: Emit | None = None, batch_size: int = 2048) -> torch.Tensor:
    """Fill patches first_patch.. of the (B, in_features) start images, one patch at a time.

    Patches before `first_patch` are kept exactly as given. `emit` turns the stack's output
    units of a patch into the input units written back; without it, the threshold rule.
    """
    if method not in ("incremental", "naive"):
        raise ConfigError(f"method must be 'incremental' or 'naive', got {method!r}")
    _check_start(stack, x0, first_patch)
    if emit is None:
        if threshold is None:
            raise ConfigError("generate_autoregressive needs a threshold or an emit function")
        emit = threshold_emit(threshold)
    run = _incremental if method == "incremental" else _naive
    with evaluating(stack):
        parts = [run(stack, x0[i : i + batch_size], None if z is None else z[i : i + batch_size], first_patch, emit)
                 for i in range(0, len(x0), batch_size)]
    return torch.cat(parts) if parts else x0.clone()
