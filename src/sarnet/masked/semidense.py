"""The masked dense layer of SarNET and what is built from it.

- `SemiDense` (thesis §3.2): a linear layer whose weight mask makes it autoregressive over patches.
  Units are flattened channel-major then row-major (a plain NCHW flatten). A patch is a square of
  the image, numbered in raster order over the patch grid; patch k of a layer is the same square in
  every channel. In and out sides may differ in channels, image size and patch size, but must share
  the patch grid. Type (a), `first=True`: output patch 0 sees input patch 0, output patch i>0 sees
  input patches 0..i-1; type (b): output patch i sees input patches 0..i. An optional latent vector z
  is appended to the input; every output unit sees all of z.
- `SemiDenseStack`: SemiDense layers with their activations, each fed the latent z if any;
- `generate_autoregressive`: fill patches one at a time, in two exact ways (docs/protocol.md "Sampling"):
  "naive" runs the whole stack over the whole image at each patch step (as the reference notebooks
  do, ~n_patches forward passes per image); "incremental" computes each layer's units of patch k
  once, as soon as their inputs are known. Units are reordered patch-major, so the inputs a patch
  may see are a prefix of its layer and each step is one small dense matmul per layer: an image
  costs about one (half-dense) forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError

ACTIVATIONS = {"relu": F.relu, "sigmoid": torch.sigmoid, "none": lambda x: x}
MAX_HIDDEN_LAYERS = 64  # the thesis's SarNETs have 2


def patch_of_units(channels: int, size: int, patch: int) -> torch.Tensor:
    """Patch index of every unit of a (channels, size, size) NCHW-flattened layer, shape (channels·size²,)."""
    grid = size // patch
    rows = torch.arange(size) // patch
    per_pixel = (rows[:, None] * grid + rows[None, :]).reshape(-1)  # raster order over the patch grid
    return per_pixel.repeat(channels)


def allowed_inputs(out_patch: torch.Tensor, in_patch: torch.Tensor, first: bool) -> torch.Tensor:
    """Boolean (out_units, in_units) connectivity of type (a) (`first`) or type (b)."""
    po, pi = out_patch[:, None], in_patch[None, :]
    if first:
        return (pi < po) | ((po == 0) & (pi == 0))
    return pi <= po


class SemiDense(nn.Module):
    """Masked linear layer, autoregressive over a shared patch grid."""

    def __init__(self, in_channels: int, out_channels: int, in_size: int, out_size: int,
                 in_patch: int, out_patch: int, latent_dim: int = 0, first: bool = False) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("in_size", in_size),
                            ("out_size", out_size), ("in_patch", in_patch), ("out_patch", out_patch)):
            if value < 1:
                raise ConfigError(f"SemiDense: {name} must be >= 1, got {value}")
        if latent_dim < 0:
            raise ConfigError(f"SemiDense: latent_dim must be >= 0, got {latent_dim}")
        if in_size % in_patch or out_size % out_patch:
            raise ConfigError(f"SemiDense: patch sizes must divide image sizes, got {in_size}/{in_patch} and {out_size}/{out_patch}")
        if in_size // in_patch != out_size // out_patch:
            raise ConfigError(
                f"SemiDense: incompatible patch grids: {in_size}² in {in_patch}² patches is a "
                f"{in_size // in_patch}×{in_size // in_patch} grid, {out_size}² in {out_patch}² patches a "
                f"{out_size // out_patch}×{out_size // out_patch} grid"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = in_size, out_size
        self.in_patch, self.out_patch = in_patch, out_patch
        self.latent_dim, self.first = latent_dim, first
        self.grid = in_size // in_patch
        self.n_patches = self.grid**2
        self.in_features = in_channels * in_size**2
        self.out_features = out_channels * out_size**2

        self.register_buffer("in_patch_index", patch_of_units(in_channels, in_size, in_patch), persistent=False)
        self.register_buffer("out_patch_index", patch_of_units(out_channels, out_size, out_patch), persistent=False)
        allowed = allowed_inputs(self.out_patch_index, self.in_patch_index, first)
        latent = torch.ones(self.out_features, latent_dim, dtype=torch.bool)
        self.register_buffer("mask", torch.cat([allowed, latent], dim=1).float())

        fan_in = self.in_features + latent_dim  # the full, unmasked fan-in (docs/protocol.md "Init")
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(self.out_features, fan_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(self.out_features).uniform_(-bound, bound))

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ConfigError(f"SemiDense: expected input (B, {self.in_features}), got {tuple(x.shape)}")
        if self.latent_dim:
            if z is None or z.shape != (x.shape[0], self.latent_dim):
                raise ConfigError(f"SemiDense: expected latent (B, {self.latent_dim}), got {None if z is None else tuple(z.shape)}")
            x = torch.cat([x, z], dim=1)
        elif z is not None:
            raise ConfigError("SemiDense: this layer has no latent input (latent_dim=0) but z was given")
        return F.linear(x, self.masked_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}×{self.in_size}² ({self.in_patch}² patches) -> "
                f"{self.out_channels}×{self.out_size}² ({self.out_patch}² patches), grid {self.grid}×{self.grid}, "
                f"latent {self.latent_dim}, type {'a' if self.first else 'b'}")


@dataclass(frozen=True)
class LayerShape:
    """One side of a SemiDense layer: channels × size² pixels in patch² patches."""

    channels: int
    size: int
    patch: int


def hidden_shapes(spec: Sequence[Sequence[int]]) -> tuple[LayerShape, ...]:
    """[[channels, size, patch], ...] from params.yaml -> LayerShapes."""
    if isinstance(spec, Sequence) and len(spec) > MAX_HIDDEN_LAYERS:  # one module each: a forged file's list could be millions
        raise ConfigError(f"hidden: at most {MAX_HIDDEN_LAYERS} layers, got {len(spec)}")
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
