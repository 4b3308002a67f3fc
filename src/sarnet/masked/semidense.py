"""The masked dense layer of SarNET and what is built from it.

- `SemiDense` (thesis §3.2): a linear layer whose weight mask makes it autoregressive over patches.
  Units are flattened channel-major then row-major (a plain NCHW flatten). A patch is a square of
  the image, numbered in raster order over the patch grid; patch k of a layer is the same square in
  every channel. In and out sides may differ in channels, image size and patch size, but must share
  the patch grid. Type (a), `first=True`: output patch 0 sees input patch 0, output patch i>0 sees
  input patches 0..i-1; type (b): output patch i sees input patches 0..i. An optional latent vector z
  is appended to the input; every output unit sees all of z.
  The weight is kept patch-major (units sorted by patch), where what a row may see is a prefix of the
  input: the layer computes only the allowed blocks (docs/protocol.md "Block-triangular layers"), and
  its files hold the plain NCHW weight and mask as before.
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


ROW_GROUPS = 4  # output rows are computed in this many groups of whole patches, each one GEMM over a prefix
# of the input: 4 was fastest for the SarNET VAE's stack on 2 cores (7, one per row of the 7×7 grid,
# pays more per-GEMM overhead; 2 computes more of the masked triangle); benchmarks/training_speed.py.


def row_groups(n_patches: int, in_units: int, out_units: int, first: bool,
               groups: int = ROW_GROUPS) -> list[tuple[int, int, int, int, torch.Tensor]]:
    """The blocks a patch-major layer computes (`in_units`, `out_units`: units per patch on each side): for
    each group of consecutive output patches [a, b), its rows r0:r1, the prefix c0 of input units every row
    of it may see whole (patches < a), and the diagonal block c0:c1 (input patches a..b−1) with its mask.
    Offsets are arithmetic and the masks built on the default device, so a model sized on the meta device
    (core.model_files.rebuild) allocates nothing."""
    count = min(groups, n_patches)
    bounds = sorted({round(i * n_patches / count) for i in range(count + 1)})
    blocks = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out_patch = torch.arange(a, b).repeat_interleave(out_units)
        in_patch = torch.arange(a, b).repeat_interleave(in_units)
        blocks.append((a * out_units, b * out_units, a * in_units, b * in_units,
                       allowed_inputs(out_patch, in_patch, first)))
    return blocks


def _block_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, z: torch.Tensor | None,
                  blocks: list, in_features: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """y = x W_allowedᵀ + b (+ z W_zᵀ), computing only the allowed blocks; also the masked diagonal blocks."""
    out = bias.expand(len(x), -1).clone() if z is None else torch.addmm(bias, z, weight[:, in_features:].t())
    diagonals = []
    for (r0, r1, c0, c1), mask in blocks:
        diagonal = weight[r0:r1, c0:c1] * mask
        diagonals.append(diagonal)
        rows = out[:, r0:r1]
        rows.addmm_(x[:, c0:c1], diagonal.t())
        if c0:
            rows.addmm_(x[:, :c0], weight[r0:r1, :c0].t())
    return out, diagonals


class _BlockInputPath(torch.autograd.Function):
    """The layer's output, differentiable in x and z (the weight comes in detached; `_BlockWeightPath` carries
    its gradient). Two paths let autograd skip what a call does not need: a Jacobian in the input never
    computes weight gradients, and the first layer never computes the image's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, z: torch.Tensor | None,
                blocks: list, in_features: int) -> torch.Tensor:
        out, diagonals = _block_output(x, weight, bias, z, blocks, in_features)
        ctx.save_for_backward(weight, *diagonals)
        ctx.blocks, ctx.in_features = blocks, in_features
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight, *diagonals = ctx.saved_tensors
        n_in, grad_x, grad_z = ctx.in_features, None, None
        if ctx.needs_input_grad[0]:  # out of place: torch.func's vmap (batched Jacobians) runs through it
            for ((r0, r1, c0, c1), _), diagonal in zip(ctx.blocks, diagonals):
                g = grad_out[..., r0:r1]
                seen = g @ diagonal if not c0 else torch.cat([g @ weight[r0:r1, :c0], g @ diagonal], dim=-1)
                seen = F.pad(seen, (0, n_in - c1))
                grad_x = seen if grad_x is None else grad_x + seen
        if ctx.needs_input_grad[3]:
            grad_z = grad_out @ weight[:, n_in:]
        return grad_x, None, None, grad_z, None, None


class _BlockWeightPath(torch.autograd.Function):
    """Zero in the forward; its backward is the weight's and the bias's gradient for the layer's output,
    written block by block in place (entries no block reads stay 0, so the optimiser never moves them)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, z: torch.Tensor | None,
                blocks: list, in_features: int) -> torch.Tensor:
        ctx.save_for_backward(x, z)
        ctx.blocks, ctx.in_features, ctx.weight_shape = blocks, in_features, weight.shape
        return x.new_zeros(len(x), weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, z = ctx.saved_tensors
        grad_w = grad_out.new_zeros(ctx.weight_shape)
        for (r0, r1, c0, c1), mask in ctx.blocks:
            g = grad_out[:, r0:r1].t()
            grad_w[r0:r1, c0:c1].addmm_(g, x[:, c0:c1]).mul_(mask)
            if c0:
                grad_w[r0:r1, :c0].addmm_(g, x[:, :c0])
        if z is not None:
            grad_w[:, ctx.in_features :].addmm_(grad_out.t(), z)
        return None, grad_w, grad_out.sum(dim=0), None, None, None


def block_triangular(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, z: torch.Tensor | None,
                     blocks: list, in_features: int) -> torch.Tensor:
    """A patch-major SemiDense layer's output: only the allowed blocks are computed, forward and backward."""
    out = _BlockInputPath.apply(x, weight.detach(), bias.detach(), z, blocks, in_features)
    if torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad):
        out = out + _BlockWeightPath.apply(x.detach(), weight, bias, None if z is None else z.detach(), blocks,
                                           in_features)
    return out


class SemiDense(nn.Module):
    """Masked linear layer, autoregressive over a shared patch grid. Its `weight` and `bias` are stored
    patch-major (`out_order` rows; `in_order` columns, then the latent ones); `state_dict` and
    `load_state_dict` speak the plain NCHW layout of the model files."""

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
        self.register_buffer("mask", torch.cat([allowed, latent], dim=1).float())  # NCHW, as the files hold it

        in_order = torch.argsort(self.in_patch_index, stable=True)
        out_order = torch.argsort(self.out_patch_index, stable=True)
        columns = torch.cat([in_order, torch.arange(self.in_features, self.in_features + latent_dim)])
        for name, order in (("in_order", in_order), ("out_order", out_order), ("columns", columns),
                            ("out_inverse", torch.argsort(out_order)), ("columns_inverse", torch.argsort(columns))):
            self.register_buffer(name, order, persistent=False)
        blocks = row_groups(self.n_patches, in_channels * in_patch**2, out_channels * out_patch**2, first)
        self.blocks = [(r0, r1, c0, c1) for r0, r1, c0, c1, _ in blocks]
        for i, (*_, block_mask) in enumerate(blocks):
            self.register_buffer(f"block_mask_{i}", block_mask.float(), persistent=False)

        fan_in = self.in_features + latent_dim  # the full, unmasked fan-in (docs/protocol.md "Init")
        bound = 1.0 / math.sqrt(fan_in)
        weight = torch.empty(self.out_features, fan_in).uniform_(-bound, bound)  # drawn NCHW: the same values as ever
        bias = torch.empty(self.out_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(weight[out_order][:, columns])
        self.bias = nn.Parameter(bias[out_order])

    def weight_nchw(self) -> torch.Tensor:
        """The weight in the plain NCHW layout (rows and columns as the units are flattened), unmasked."""
        return self.weight[self.out_inverse][:, self.columns_inverse]

    def masked_weight(self) -> torch.Tensor:
        """The NCHW weight with the forbidden connections 0."""
        return self.weight_nchw() * self.mask

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 (torch's hook)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        weight, bias = self.weight_nchw(), self.bias[self.out_inverse]
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        destination[prefix + "bias"] = bias if keep_vars else bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # noqa: ANN001 (torch's hook)
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        if isinstance(weight, torch.Tensor) and weight.shape == self.weight.shape:  # else torch reports the mismatch
            state_dict[prefix + "weight"] = weight[self.out_order.to(weight.device)][:, self.columns.to(weight.device)]
        if isinstance(bias, torch.Tensor) and bias.shape == self.bias.shape:
            state_dict[prefix + "bias"] = bias[self.out_order.to(bias.device)]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward_patch_major(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_features) patch-major input -> (B, out_features) patch-major output; checked inputs."""
        blocks = [(block, getattr(self, f"block_mask_{i}")) for i, block in enumerate(self.blocks)]
        return block_triangular(x, self.weight, self.bias, z if self.latent_dim else None, blocks, self.in_features)

    def check_inputs(self, x: torch.Tensor, z: torch.Tensor | None) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ConfigError(f"SemiDense: expected input (B, {self.in_features}), got {tuple(x.shape)}")
        if self.latent_dim:
            if z is None or z.shape != (x.shape[0], self.latent_dim):
                raise ConfigError(f"SemiDense: expected latent (B, {self.latent_dim}), got {None if z is None else tuple(z.shape)}")
        elif z is not None:
            raise ConfigError("SemiDense: this layer has no latent input (latent_dim=0) but z was given")

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_features) NCHW -> (B, out_features) NCHW."""
        self.check_inputs(x, z)
        return self.forward_patch_major(x.index_select(1, self.in_order), z).index_select(1, self.out_inverse)

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
        """Patch-major from the first layer's input to the last one's output: a layer's output order is the
        next one's input order (the same units), so the stack reorders only at its two ends."""
        first = self.layers[0]
        first.check_inputs(x, z)
        h = x.index_select(1, first.in_order)
        for layer, act in zip(self.layers, self.activations):
            h = ACTIVATIONS[act](layer.forward_patch_major(h, z))
        return h.index_select(1, self.layers[-1].out_inverse)

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
        bias = layer.bias.detach()[:, None]  # stored patch-major already
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
