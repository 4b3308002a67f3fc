"""Explainability, interpolation and inpainting figures (thesis §4.3, §5.1, §5.2; docs/protocol.md
"Sampling").

- Patch importance (first SemiDense layer only): for a target output patch o and every input
  patch k, importance_k = Σ_{u ∈ units of o} |Σ_{j ∈ inputs of k} x_j · W[u, j]| with the masked
  weight, so patches the mask forbids for o are exactly 0; no bias, no latent.
- Interpolation: z_t = z_a + t (z_b − z_a) between the encoder means of two images, decoded
  autoregressively by the SarNET VAE.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sarnet.core.data import IMAGE_SIZE, PIXELS
from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError
from sarnet.families.sarnet import SarNet
from sarnet.families.sarnet_vae import SarNetVAE
from sarnet.masked.semidense import SemiDenseStack

# Importance colours, low -> high: blue, yellow, red (piecewise linear; no plotting library needed).
_COLOUR_STOPS = np.array([[0.15, 0.35, 1.0], [1.0, 0.9, 0.1], [1.0, 0.05, 0.05]])
_COLOUR_ALPHA = 0.7  # how much colour covers the grey pixels, so the image stays readable beneath


def stack_of(model: nn.Module) -> SemiDenseStack:
    """The SemiDense stack a SarNET VAE decodes with, or a simple SarNET is."""
    if isinstance(model, SarNetVAE):
        return model.decoder
    if isinstance(model, SarNet):
        return model.stack
    raise ConfigError(f"patch importance needs a SarNET or SarNET VAE, got {type(model).__name__}")


def _as_pixels(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(28, 28) or (784,) image -> float (784,) tensor."""
    pixels = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if pixels.numel() != PIXELS:
        raise ConfigError(f"expected a 28×28 image (784 pixels), got shape {tuple(pixels.shape)}")
    return pixels.reshape(PIXELS).float().cpu()


def check_target_patch(target_patch: int, n_patches: int) -> None:
    """ConfigError unless 0 <= target_patch < n_patches."""
    if not 0 <= target_patch < n_patches:
        grid = int(round(n_patches**0.5))
        raise ConfigError(f"target patch {target_patch} is outside the {grid}×{grid} grid (0..{n_patches - 1})")


@torch.no_grad()
def patch_importance(model: SarNetVAE | SarNet, image: torch.Tensor | np.ndarray, target_patch: int) -> torch.Tensor:
    """Importance of every input patch for predicting `target_patch`, shape (n_patches,).

    Computed in the first SemiDense layer of the model's stack (a SarNET VAE's decoder or a
    SarNET's stack); a classification SarNET sees its one-hot input channels, all of which
    belong to the same patch.
    """
    stack = stack_of(model)
    layer = stack.layers[0]
    check_target_patch(int(target_patch), layer.n_patches)
    pixels = _as_pixels(image)
    param = layer.weight
    x = pixels.to(param.device, param.dtype)[None]
    if isinstance(model, SarNet):
        x = model.encode_input(x)  # the stack's real input: pixels or one-hot class channels
    x = x[0]
    # The masked weight makes forbidden patches exactly 0; the latent columns are left out.
    weight = layer.masked_weight()[:, : layer.in_features]
    rows = layer.out_patch_index == int(target_patch)
    contributions = weight[rows] * x[None, :]  # (units of o, inputs): x_j · W[u, j]
    per_patch = contributions.new_zeros(contributions.shape[0], layer.n_patches)
    per_patch.index_add_(1, layer.in_patch_index, contributions)  # Σ over the inputs of each patch
    return per_patch.abs().sum(dim=0).detach()


def top_patches(importance: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most important patches (indices, most important first) and their importance
    min–max scaled to [0, 1] over those k.

    Patches of zero importance are left out (the mask forbids them, or the image is black
    there), so fewer than k may come back. When all chosen values are equal they scale to 1.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    importance = torch.as_tensor(importance).detach().flatten().cpu().double()
    values, indices = torch.sort(importance, descending=True, stable=True)
    keep = values[:k] > 0
    values, indices = values[:k][keep], indices[:k][keep]
    if len(values) == 0:
        return indices, values.float()
    low, high = values.min(), values.max()
    scaled = torch.ones_like(values) if high == low else (values - low) / (high - low)
    return indices, scaled.float()


def importance_colours(scaled: np.ndarray) -> np.ndarray:
    """[0, 1] values -> (…, 3) RGB on the blue–yellow–red scale."""
    s = np.clip(np.asarray(scaled, dtype=np.float64), 0.0, 1.0) * (len(_COLOUR_STOPS) - 1)
    lo = np.minimum(np.floor(s).astype(int), len(_COLOUR_STOPS) - 2)
    frac = (s - lo)[..., None]
    return _COLOUR_STOPS[lo] * (1 - frac) + _COLOUR_STOPS[lo + 1] * frac


def pixel_patch_map(model: SarNetVAE | SarNet) -> np.ndarray:
    """Patch index of every pixel of the model's input image, shape (28, 28)."""
    index = stack_of(model).layers[0].in_patch_index[:PIXELS]  # one channel is enough: patches repeat per channel
    return index.cpu().numpy().reshape(IMAGE_SIZE, IMAGE_SIZE)


def importance_overlay(image: torch.Tensor | np.ndarray, importance: torch.Tensor, target_patch: int,
                       model_patch_map: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """(28, 28, 3) RGB in [0, 1]: the grey image, its top-k patches coloured by scaled importance
    (blue low, yellow, red high) and the target patch white."""
    grey = _as_pixels(image).double().clamp(0, 1).numpy().reshape(IMAGE_SIZE, IMAGE_SIZE)
    patches = np.asarray(model_patch_map).reshape(IMAGE_SIZE, IMAGE_SIZE)
    importance = torch.as_tensor(importance).flatten()
    check_target_patch(int(target_patch), len(importance))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    indices, scaled = top_patches(importance, k)
    for patch, colour in zip(indices.tolist(), importance_colours(scaled.numpy())):
        where = patches == patch
        rgb[where] = (1 - _COLOUR_ALPHA) * rgb[where] + _COLOUR_ALPHA * colour
    rgb[patches == int(target_patch)] = 1.0
    return rgb


def interpolation_codes(z_a: torch.Tensor, z_b: torch.Tensor, steps: int) -> torch.Tensor:
    """(steps, L) codes z_a + t (z_b − z_a) for t = linspace(0, 1, steps); the ends are z_a and z_b bit for bit."""
    if steps < 2:
        raise ConfigError(f"interpolation needs steps >= 2 (both ends), got {steps}")
    z_a, z_b = z_a.reshape(-1), z_b.reshape(-1)
    if z_a.shape != z_b.shape:
        raise ConfigError(f"codes differ in size: {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device)[:, None]
    codes = z_a[None] + t * (z_b - z_a)[None]
    # z_a + 1·(z_b − z_a) need not round to z_b: set both ends explicitly.
    codes[0], codes[-1] = z_a, z_b
    return codes


@torch.no_grad()
def encode_mean(model: SarNetVAE, images: torch.Tensor) -> torch.Tensor:
    """Encoder means μ (N, L) of (N, 28, 28) images: deterministic codes."""
    param = next(model.parameters())
    with evaluating(model):
        mu, _ = model.encode(images.reshape(-1, PIXELS).to(param.device, param.dtype))
    return mu


@torch.no_grad()
def interpolate(model: SarNetVAE, image_a: torch.Tensor, image_b: torch.Tensor, steps: int, *,
                threshold: float, method: str = "incremental") -> torch.Tensor:
    """(steps, 28, 28) images decoded autoregressively along the line between two images' codes."""
    if not isinstance(model, SarNetVAE):
        raise ConfigError(f"interpolation needs a SarNET VAE, got {type(model).__name__}")
    if steps < 2:
        raise ConfigError(f"interpolation needs steps >= 2 (both ends), got {steps}")
    mu = encode_mean(model, torch.stack([_as_pixels(image_a), _as_pixels(image_b)]))
    codes = interpolation_codes(mu[0], mu[1], steps)
    return model.sample(len(codes), z=codes, threshold=threshold, method=method)


def importance_figure(model: SarNetVAE | SarNet, image: torch.Tensor | np.ndarray, targets: list[int],
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """(importance (T, n_patches), overlays (T, 28, 28, 3)): one panel per target patch, its top-k
    input patches coloured by importance and the target white. Every target is checked first."""
    n_patches = stack_of(model).layers[0].n_patches
    for target in targets:
        check_target_patch(int(target), n_patches)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    importance = np.stack([patch_importance(model, image, t).double().cpu().numpy() for t in targets])
    patch_map = pixel_patch_map(model)
    overlays = np.stack([importance_overlay(image, imp, t, patch_map, k=k) for imp, t in zip(importance, targets)])
    return importance, overlays


def inpainting_rows(model: SarNetVAE, images: torch.Tensor, generator: torch.Generator | None, *,
                    keep_patches: int, n_styles: int, z_scale: float, threshold: float) -> torch.Tensor:
    """(N, n_styles + 2, 28, 28): per image, the original, its kept first patches, then the completions."""
    if not isinstance(model, SarNetVAE):
        raise ConfigError(f"inpainting needs a SarNET VAE, got {type(model).__name__}")
    if not 1 <= keep_patches <= model.decoder.n_patches:
        raise ConfigError(f"keep_patches must be in 1..{model.decoder.n_patches}, got {keep_patches}")
    images = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).float()
    completed = model.inpaint(images, generator, keep_patches=keep_patches, n_styles=n_styles, z_scale=z_scale,
                              threshold=threshold)
    kept = images.flatten(1).clone()
    kept[:, model.decoder.layers[0].in_patch_index.cpu() >= keep_patches] = 0.0
    return torch.cat([images[:, None], kept.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE), completed.cpu().to(images.dtype)], dim=1)


def interpolation_row(model: SarNetVAE, image_a: torch.Tensor, image_b: torch.Tensor, steps: int, *,
                      threshold: float) -> torch.Tensor:
    """(steps + 2, 28, 28): original A, the decoded path from A's code to B's, original B."""
    path = interpolate(model, image_a, image_b, steps, threshold=threshold).cpu()
    ends = [_as_pixels(image).view(1, IMAGE_SIZE, IMAGE_SIZE).to(path.dtype) for image in (image_a, image_b)]
    return torch.cat([ends[0], path, ends[1]])
