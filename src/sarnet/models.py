"""SarNET (thesis §3.3), SarNET VAE (§3.4) and the convolutional VAE baseline (§4.2).

Images enter and leave as (B, 784) rows in [0, 1] (the NCHW flatten of 1×28×28). Architectures
follow REFERENCE.md "Models"; their sizes come from params.yaml.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
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


@dataclass(frozen=True)
class LayerShape:
    """One side of a SemiDense layer: channels × size² pixels in patch² patches."""

    channels: int
    size: int
    patch: int


DEFAULT_HIDDEN = (LayerShape(2, 14, 2), LayerShape(2, 28, 4))


def hidden_shapes(spec: Sequence[Sequence[int]] | None) -> tuple[LayerShape, ...]:
    """[[channels, size, patch], ...] from params.yaml -> LayerShapes."""
    return DEFAULT_HIDDEN if spec is None else tuple(LayerShape(*map(int, s)) for s in spec)


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


class SarNet(nn.Module):
    """Simple SarNET: a SemiDense stack without latent input.

    classes=0: regression, output = pixel values (no activation), loss mean|x−y|^a + (1 − SSIM).
    classes=C: classification over C intensity classes, one-hot input channels, logits out.
    """

    def __init__(self, hidden: Sequence[LayerShape] = DEFAULT_HIDDEN, patch: int = 4, classes: int = 0,
                 loss_power: float = 1.0) -> None:
        super().__init__()
        if classes == 1 or classes < 0 or classes > 256:
            raise ConfigError(f"classes must be 0 (regression) or 2..256, got {classes}")
        self.classes = classes
        self.loss_power = loss_power
        channels = classes or 1
        shapes = (LayerShape(channels, IMAGE_SIZE, patch), *hidden, LayerShape(channels, IMAGE_SIZE, patch))
        self.stack = SemiDenseStack(shapes, ["relu"] * (len(shapes) - 2) + ["none"])

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> class indices floor(x·255 / (256 // C)) (REFERENCE.md)."""
        return torch.div((x * 255).round().long(), 256 // self.classes, rounding_mode="floor").clamp_(0, self.classes - 1)

    def class_values(self, classes: torch.Tensor) -> torch.Tensor:
        """Class indices -> displayable [0, 1] pixels (class 0 black, the top class white)."""
        return classes.float() / (self.classes - 1)

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) pixels -> the stack's input: pixels, or one-hot class channels (B, C·784)."""
        if not self.classes:
            return x
        return F.one_hot(self.quantise(x), self.classes).permute(0, 2, 1).reshape(len(x), -1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stack(self.encode_input(x))
        return out if not self.classes else out.view(len(x), self.classes, PIXELS)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-sample training loss."""
        x = batch[0]
        out = self(x)
        if self.classes:
            return F.cross_entropy(out, self.quantise(x), reduction="none").mean(dim=1)
        power = (out - x).abs().pow(self.loss_power).mean(dim=1)
        similarity = ssim(out.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE), x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE),
                          data_range=1.0, size_average=False)
        return power + (1.0 - similarity)


class ConvEncoder(nn.Module):
    """Conv 1→32 s2, Conv 32→64 s2, Conv 64→128 7×7, then μ and log σ² heads (both VAEs)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 128, 7), nn.Flatten(),
        )
        self.mu = nn.Linear(128, latent_dim)
        self.logvar = nn.Linear(128, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE))
        return self.mu(h), self.logvar(h)


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample BCE (summed over pixels) + KL divergence to N(0, I) (summed over latents)."""
    bce = F.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x, reduction="none").sum(dim=1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    return bce + kl


class _VAE(nn.Module):
    latent_dim: int
    encoder: ConvEncoder

    def decode(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(x, z), mu, logvar

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = batch[0]
        recon, mu, logvar = self(x)
        return vae_loss(recon, x, mu, logvar)


class SarNetVAE(_VAE):
    """Conv encoder + SemiDense decoder fed z at every layer (ReLU, ReLU, Sigmoid)."""

    def __init__(self, latent_dim: int, hidden: Sequence[LayerShape] = DEFAULT_HIDDEN, patch: int = 4) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim)
        shapes = (LayerShape(1, IMAGE_SIZE, patch), *hidden, LayerShape(1, IMAGE_SIZE, patch))
        self.decoder = SemiDenseStack(shapes, ["relu"] * (len(shapes) - 2) + ["sigmoid"], latent_dim=latent_dim)

    def decode(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoding: output patch i from input patches < i and z."""
        return self.decoder(x, z)

    def sample(self, n: int, generator: torch.Generator | None = None, method: str = "incremental",
               threshold: float = 0.105, z: torch.Tensor | None = None) -> torch.Tensor:
        """n images (n, 28, 28) in [0, 1], generated patch by patch from z ~ N(0, I); patch 0 stays black."""
        from sarnet.sampling import generate_autoregressive

        z = self._prior(n, generator) if z is None else z
        start = torch.zeros(len(z), PIXELS, device=z.device, dtype=z.dtype)
        return generate_autoregressive(self.decoder, start, z, first_patch=1, threshold=threshold,
                                       method=method).view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def inpaint(self, images: torch.Tensor, keep_patches: int, n_styles: int, generator: torch.Generator | None = None,
                z_scale: float = 1 / 1.5, threshold: float = 0.15, method: str = "incremental") -> torch.Tensor:
        """Complete each image from its first `keep_patches` patches in `n_styles` styles (z ~ N(0, I)·z_scale).

        Returns (n_images, n_styles, 28, 28); the kept patches are copied bit for bit.
        """
        from sarnet.sampling import inpaint

        return inpaint(self, images, keep_patches, n_styles, generator, z_scale, threshold, method)

    def _prior(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        return torch.randn(n, self.latent_dim, generator=generator, dtype=dtype).to(device)


class ConvVAE(_VAE):
    """The TensorFlow-tutorial convolutional VAE (the thesis's baseline)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim)
        self.project = nn.Linear(latent_dim, 128)
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 7), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
        )

    def decode(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(z).view(-1, 128, 1, 1)).view(-1, PIXELS)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch_size: int = 2000) -> torch.Tensor:
        """n images (n, 28, 28) decoded from z ~ N(0, I), no threshold."""
        param = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=param.dtype).to(param.device)
        with evaluating(self):
            images = torch.cat([self.decode(None, z[i : i + batch_size]) for i in range(0, n, batch_size)])
        return images.view(-1, IMAGE_SIZE, IMAGE_SIZE)


MODEL_KINDS = ("sarnet", "sarnet_vae", "conv_vae")


def build_model(kind: str, params: dict, latent_dim: int | None = None) -> nn.Module:
    """The model a params.yaml section describes (`sarnet`, `sarnet_vae` or `conv_vae`)."""
    if kind == "sarnet":
        return SarNet(hidden_shapes(params.get("hidden")), params.get("patch", 4), params.get("classes", 0),
                      params.get("loss_power", 1.0))
    if kind in ("sarnet_vae", "conv_vae") and latent_dim is None:
        raise ConfigError(f"{kind} needs a latent dimension")
    if kind == "sarnet_vae":
        return SarNetVAE(int(latent_dim), hidden_shapes(params.get("hidden")), params.get("patch", 4))
    if kind == "conv_vae":
        return ConvVAE(int(latent_dim))
    raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
