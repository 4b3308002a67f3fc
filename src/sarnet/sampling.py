"""Patch-by-patch generation with SemiDense stacks (REFERENCE.md "Sampling").

Two exact ways to run the same autoregressive loop:
- "naive": at each of the patch steps, run the whole stack over the whole image (as the
  reference notebooks do): ~n_patches forward passes per image;
- "incremental": compute each layer's units of patch k once, as soon as their inputs are known.
  Units are reordered patch-major, so the inputs a patch may see are a prefix of its layer and
  each step is one small dense matmul per layer: an image costs about one (half-dense) forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sarnet.errors import ConfigError
from sarnet.models import ACTIVATIONS, IMAGE_SIZE, PIXELS, SarNet, SarNetVAE, SemiDenseStack, evaluating
from sarnet.semidense import SemiDense

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
                            first_patch: int = 1, threshold: float = 0.105, method: str = "incremental",
                            emit: Emit | None = None, batch_size: int = 2048) -> torch.Tensor:
    """Fill patches first_patch.. of the (B, in_features) start images, one patch at a time.

    Patches before `first_patch` are kept exactly as given. `emit` turns the stack's output
    units of a patch into the input units written back (default: the threshold rule).
    """
    if method not in ("incremental", "naive"):
        raise ConfigError(f"method must be 'incremental' or 'naive', got {method!r}")
    _check_start(stack, x0, first_patch)
    emit = emit or threshold_emit(threshold)
    run = _incremental if method == "incremental" else _naive
    with evaluating(stack):
        parts = [run(stack, x0[i : i + batch_size], None if z is None else z[i : i + batch_size], first_patch, emit)
                 for i in range(0, len(x0), batch_size)]
    return torch.cat(parts) if parts else x0.clone()


def inpaint(model: SarNetVAE, images: torch.Tensor, keep_patches: int, n_styles: int,
            generator: torch.Generator | None = None, z_scale: float = 1 / 1.5, threshold: float = 0.15,
            method: str = "incremental") -> torch.Tensor:
    """(n_images, n_styles, 28, 28): each image completed after its first `keep_patches` patches,
    in `n_styles` styles from z ~ N(0, I)·z_scale. The kept patches are copied unchanged."""
    if n_styles < 1:
        raise ConfigError(f"n_styles must be >= 1, got {n_styles}")
    flat = images.reshape(len(images), -1)
    if flat.shape[1] != PIXELS:
        raise ConfigError(f"expected images of 28×28 pixels, got {tuple(images.shape)}")
    param = next(model.parameters())
    x0 = flat.to(param.device, param.dtype).repeat_interleave(n_styles, dim=0)
    x0[:, model.decoder.layers[0].in_patch_index >= keep_patches] = 0.0
    z = torch.randn(len(x0), model.latent_dim, generator=generator, dtype=param.dtype).to(param.device) * z_scale
    out = generate_autoregressive(model.decoder, x0, z, first_patch=keep_patches, threshold=threshold, method=method)
    return out.view(len(images), n_styles, IMAGE_SIZE, IMAGE_SIZE)


@torch.no_grad()
def sample_sarnet_noise(model: SarNet, n: int, generator: torch.Generator | None = None, alpha_max: float = 0.65,
                        p_earlier: float = 0.3, threshold: float = 0.15, refine: bool = True,
                        batch_size: int = 2048) -> torch.Tensor:
    """Simple (regression) SarNET sampler, thesis §3.3: per image α = α_max·U[0,1] and noise α·|N(0,1)|.

    At step i the noise is added to input patch i and, with probability `p_earlier`, to each earlier
    patch (drawn anew each step); output patch i+1 is written (pixels < threshold → 0, > 1 → 1).
    The noise never reaches the stored image. Then one refining pass over the whole image.
    """
    if model.classes:
        raise ConfigError("sample_sarnet_noise needs a regression SarNet (classes=0); use sample_sarnet_classes")
    param = next(model.parameters())
    stack = model.stack
    patch_index = stack.layers[0].in_patch_index
    clean = threshold_emit(threshold, clip_high=True)
    parts = []
    with evaluating(model):
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            alpha = alpha_max * torch.rand(b, 1, generator=generator)
            noise = (alpha * torch.randn(b, PIXELS, generator=generator).abs()).to(param.device, param.dtype)
            img = torch.zeros(b, PIXELS, device=param.device, dtype=param.dtype)
            for i in range(stack.n_patches - 1):
                chosen = (torch.rand(b, stack.n_patches, generator=generator) < p_earlier).to(param.device)
                noisy = chosen[:, patch_index] & (patch_index < i) | (patch_index == i)
                out = stack(img + noise * noisy, None)
                units = (patch_index == i + 1).nonzero().squeeze(1)
                img[:, units] = clean(out[:, units])
            if refine:
                img = clean(stack(img, None))
            parts.append(img)
    return torch.cat(parts).view(n, IMAGE_SIZE, IMAGE_SIZE)


@torch.no_grad()
def sample_sarnet_classes(model: SarNet, n: int, generator: torch.Generator | None = None, temperature: float = 0.3,
                          method: str = "incremental") -> torch.Tensor:
    """Classification SarNET sampler: each pixel's class drawn from softmax(logits / temperature)."""
    if not model.classes:
        raise ConfigError("sample_sarnet_classes needs a classification SarNet (classes >= 2)")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    param = next(model.parameters())
    classes = model.classes

    def emit(logits: torch.Tensor) -> torch.Tensor:  # (B, C·units) channel-major within the patch
        b = len(logits)
        probs = F.softmax(logits.view(b, classes, -1).transpose(1, 2) / temperature, dim=-1)  # (B, units, C)
        draws = torch.multinomial(probs.reshape(-1, classes).float().cpu(), 1, generator=generator).view(b, -1)
        return F.one_hot(draws, classes).transpose(1, 2).reshape(b, -1).to(logits.device, logits.dtype)

    x0 = model.encode_input(torch.zeros(n, PIXELS, device=param.device, dtype=param.dtype))
    one_hot = generate_autoregressive(model.stack, x0, None, first_patch=1, method=method, emit=emit)
    return model.class_values(one_hot.view(n, classes, PIXELS).argmax(dim=1)).view(n, IMAGE_SIZE, IMAGE_SIZE)


# REFERENCE.md "Sampling"; params.yaml's `sampling` section overrides them key by key.
DEFAULT_SAMPLING = {
    "sarnet_vae": {"threshold": 0.105},
    "sarnet": {"alpha_max": 0.65, "p_earlier": 0.3, "threshold": 0.15, "refine": True, "temperature": 0.3},
}


def generate_model_samples(kind: str, model: torch.nn.Module, n: int, generator: torch.Generator,
                           sampling_params: dict | None = None) -> torch.Tensor:
    """n images (n, 28, 28) from any trained generator, with its sampling settings from params.yaml."""
    from sarnet.models import ConvVAE

    settings = {k: v | (sampling_params or {}).get(k, {}) for k, v in DEFAULT_SAMPLING.items()}
    if kind == "sarnet_vae" and isinstance(model, SarNetVAE):
        return model.sample(n, generator, threshold=settings["sarnet_vae"]["threshold"])
    if kind == "conv_vae" and isinstance(model, ConvVAE):
        return model.sample(n, generator)
    if kind == "sarnet" and isinstance(model, SarNet):
        s = settings["sarnet"]
        if model.classes:
            return sample_sarnet_classes(model, n, generator, temperature=s["temperature"])
        return sample_sarnet_noise(model, n, generator, alpha_max=s["alpha_max"], p_earlier=s["p_earlier"],
                                   threshold=s["threshold"], refine=s["refine"])
    raise ConfigError(f"no sampler for model kind {kind!r} and {type(model).__name__}")
