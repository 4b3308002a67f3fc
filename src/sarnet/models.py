"""SarNET (thesis §3.3), SarNET VAE (§3.4) and the convolutional VAE baseline (§4.2).

Images enter and leave as (B, 784) rows in [0, 1] (the NCHW flatten of 1×28×28). Architectures
follow docs/protocol.md "Models"; their sizes come from params.yaml. Every model says what it is
(`kind`, `model_args`: its constructor arguments) so a model file can rebuild it, and owns its
`sample(...)`, whose settings are its `sampling.<kind>` section of params.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim
from torch import nn

from sarnet.errors import ConfigError
from sarnet.layers import (IMAGE_SIZE, PIXELS, LayerShape, PointMapConvTranspose2d, SemiDenseStack, WholeMapConv2d,
                           evaluating, generate_autoregressive, hidden_shapes, threshold_emit)
from sarnet.params import check_keys


class Generator(nn.Module):
    """A torch model that generates 28×28 images and can be rebuilt from its file.

    Subclasses set `kind` (its params.yaml section and model-file tag), `arch_keys` (the section's
    keys that are constructor arguments) and `sampling_keys` (the keys of `sampling.<kind>`).
    """

    kind: ClassVar[str]
    arch_keys: ClassVar[tuple[str, ...]] = ()
    sampling_keys: ClassVar[tuple[str, ...]] = ()
    needs_latent: ClassVar[bool] = False
    reconstructs: ClassVar[bool] = True  # has `reconstruct` (a GAN cannot map an image back)
    model_args: dict[str, Any]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], latent_dim: int | None = None) -> "Generator":
        """The model a params.yaml section describes (its architecture keys; the rest is training's)."""
        missing = [k for k in cls.arch_keys if k not in params]
        if missing:
            raise ConfigError(f"params.yaml: `{cls.kind}` has no '{missing[0]}'")
        args = {k: params[k] for k in cls.arch_keys}
        if cls.needs_latent:
            if latent_dim is None:
                raise ConfigError(f"{cls.kind} needs a latent dimension")
            args["latent_dim"] = int(latent_dim)
        return cls(**args)

    def sample(self, n: int, generator: torch.Generator | None, **settings: Any) -> torch.Tensor:
        """n images (n, 28, 28) in [0, 1]."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) real images -> (B, 28, 28) reconstructions in [0, 1], in eval mode."""
        raise NotImplementedError

    @torch.no_grad()
    def test_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """What the training stage records on the (B, 784) test images: the reconstruction errors per
        pixel (`test_mse`, `test_l1`) of a model that reconstructs; a likelihood model says its NLL."""
        if not self.reconstructs:
            return {}
        recon = self.reconstruct(x).flatten(1)
        return {"test_mse": float((recon - x).pow(2).mean()), "test_l1": float((recon - x).abs().mean())}

    def generate(self, n: int, seed: int, settings: Mapping[str, Any]) -> torch.Tensor:
        """n images (n, 28, 28) as float32 on the CPU, seeded, with this kind's sampling settings."""
        check_keys(f"sampling.{self.kind}", settings, self.sampling_keys, required=True)
        return self.sample(n, torch.Generator().manual_seed(seed), **settings).float().cpu()

    def _param(self) -> torch.Tensor:
        return next(self.parameters())


class SarNet(Generator):
    """Simple SarNET: a SemiDense stack without latent input (thesis §3.3, §4.1).

    classes=0: regression, output = pixel values (no activation), loss mean|x−y|^a (+ 1 − SSIM).
    classes=1: binary target (§4.1, Figure 4.3b): one logit per pixel, the probability that it is white,
               trained on the [0, 1] pixels as soft targets with binary cross-entropy (+ 1 − SSIM of the
               probabilities); sampled by drawing each pixel black or white.
    classes=C≥2: classification over C intensity classes, one-hot input channels, logits out, cross-entropy.
    `ssim` adds the (1 − SSIM) term (regression and binary target only).
    """

    kind = "sarnet"
    arch_keys = ("hidden", "patch", "classes", "loss_power", "ssim")
    sampling_keys = ("alpha_max", "p_earlier", "threshold", "refine", "temperature")

    # ssim defaults to True only for model files written before the option, which all trained with SSIM.
    def __init__(self, hidden: Sequence[Sequence[int]], patch: int, classes: int, loss_power: float,
                 ssim: bool = True) -> None:
        super().__init__()
        if classes < 0 or classes > 256:
            raise ConfigError(f"classes must be 0 (regression), 1 (binary target) or 2..256, got {classes}")
        if not isinstance(ssim, bool):
            raise ConfigError(f"ssim must be true or false, got {ssim!r}")
        if ssim and classes >= 2:
            raise ConfigError(f"SSIM needs pixel outputs: set ssim: false for classes = {classes} (or use classes 0 or 1)")
        shapes_hidden = hidden_shapes(hidden)
        self.model_args = {"hidden": [[s.channels, s.size, s.patch] for s in shapes_hidden], "patch": int(patch),
                           "classes": int(classes), "loss_power": float(loss_power), "ssim": ssim}
        self.classes = classes
        self.loss_power = loss_power
        self.ssim = ssim
        channels = classes if classes >= 2 else 1
        shapes = (LayerShape(channels, IMAGE_SIZE, patch), *shapes_hidden, LayerShape(channels, IMAGE_SIZE, patch))
        self.stack = SemiDenseStack(shapes, ["relu"] * (len(shapes) - 2) + ["none"])

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> class indices floor(x·255 / (256 // C)) (docs/protocol.md "Models")."""
        return torch.div((x * 255).round().long(), 256 // self.classes, rounding_mode="floor").clamp_(0, self.classes - 1)

    def class_values(self, classes: torch.Tensor) -> torch.Tensor:
        """Class indices -> displayable [0, 1] pixels (class 0 black, the top class white)."""
        return classes.float() / (self.classes - 1)

    def encode_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 784) pixels -> the stack's input: pixels, or one-hot class channels (B, C·784)."""
        if self.classes < 2:
            return x
        return F.one_hot(self.quantise(x), self.classes).permute(0, 2, 1).reshape(len(x), -1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stack(self.encode_input(x))
        return out if self.classes < 2 else out.view(len(x), self.classes, PIXELS)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-sample training loss."""
        x = batch[0]
        out = _loss_precision(self(x))
        if self.classes >= 2:
            return F.cross_entropy(out, self.quantise(x), reduction="none").mean(dim=1)
        if self.classes == 1:
            pixel_loss = F.binary_cross_entropy_with_logits(out, x, reduction="none").mean(dim=1)
            image = torch.sigmoid(out)
        else:
            pixel_loss = (out - x).abs().pow(self.loss_power).mean(dim=1)
            image = out
        if not self.ssim:
            return pixel_loss
        similarity = ssim(image.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE), x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE),
                          data_range=1.0, size_average=False)
        return pixel_loss + (1.0 - similarity)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher-forced reconstruction (thesis Figure 4.2b): each patch predicted from the real patches
        before it; regression output clipped to [0, 1], the binary target's probability, the likeliest class."""
        with evaluating(self):
            out = self(x)
        if self.classes >= 2:
            image = self.class_values(out.argmax(dim=1))
        else:
            image = torch.sigmoid(out) if self.classes == 1 else out.clamp(0.0, 1.0)
        return image.view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def sample(self, n: int, generator: torch.Generator | None, *, alpha_max: float, p_earlier: float,
               threshold: float, refine: bool, temperature: float, method: str = "incremental") -> torch.Tensor:
        """n images: the noise sampler for regression, draws at `temperature` for the class models."""
        if self.classes >= 2:
            return self.sample_classes(n, generator, temperature=temperature, method=method)
        if self.classes == 1:
            return self.sample_binary(n, generator, temperature=temperature, method=method)
        return self.sample_noise(n, generator, alpha_max=alpha_max, p_earlier=p_earlier, threshold=threshold,
                                 refine=refine)

    @torch.no_grad()
    def sample_noise(self, n: int, generator: torch.Generator | None, *, alpha_max: float, p_earlier: float,
                     threshold: float, refine: bool, batch_size: int = 2048) -> torch.Tensor:
        """Regression sampler, thesis §3.3: per image α = α_max·U[0,1] and noise α·|N(0,1)|.

        At step i the noise is added to input patch i and, with probability `p_earlier`, to each earlier
        patch (drawn anew each step); output patch i+1 is written (pixels < threshold → 0, > 1 → 1).
        The noise never reaches the stored image. Then one refining pass over the whole image.
        """
        if self.classes:
            raise ConfigError("sample_noise needs a regression SarNet (classes=0); use sample")
        param = self._param()
        stack = self.stack
        patch_index = stack.layers[0].in_patch_index
        clean = threshold_emit(threshold, clip_high=True)
        parts = []
        with evaluating(self):
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
    def sample_classes(self, n: int, generator: torch.Generator | None, *, temperature: float,
                       method: str = "incremental") -> torch.Tensor:
        """Classification sampler: each pixel's class drawn from softmax(logits / temperature)."""
        if self.classes < 2:
            raise ConfigError("sample_classes needs a classification SarNet (classes >= 2)")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        param = self._param()
        classes = self.classes

        def emit(logits: torch.Tensor) -> torch.Tensor:  # (B, C·units) channel-major within the patch
            b = len(logits)
            probs = F.softmax(logits.view(b, classes, -1).transpose(1, 2) / temperature, dim=-1)  # (B, units, C)
            draws = torch.multinomial(probs.reshape(-1, classes).float().cpu(), 1, generator=generator).view(b, -1)
            return F.one_hot(draws, classes).transpose(1, 2).reshape(b, -1).to(logits.device, logits.dtype)

        x0 = self.encode_input(torch.zeros(n, PIXELS, device=param.device, dtype=param.dtype))
        one_hot = generate_autoregressive(self.stack, x0, None, first_patch=1, method=method, emit=emit)
        return self.class_values(one_hot.view(n, classes, PIXELS).argmax(dim=1)).view(n, IMAGE_SIZE, IMAGE_SIZE)

    @torch.no_grad()
    def sample_binary(self, n: int, generator: torch.Generator | None, *, temperature: float,
                      method: str = "incremental") -> torch.Tensor:
        """Binary-target sampler: patch by patch, each pixel white with probability sigmoid(logit / temperature)
        (uniform draws on the CPU generator, so any device and either method draw the same numbers)."""
        if self.classes != 1:
            raise ConfigError("sample_binary needs a binary-target SarNet (classes = 1)")
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        param = self._param()

        def emit(logits: torch.Tensor) -> torch.Tensor:
            uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
            white = uniform < torch.sigmoid(logits.double() / temperature).cpu()
            return white.to(logits.device, logits.dtype)

        x0 = torch.zeros(n, PIXELS, device=param.device, dtype=param.dtype)
        images = generate_autoregressive(self.stack, x0, None, first_patch=1, method=method, emit=emit)
        return images.view(n, IMAGE_SIZE, IMAGE_SIZE)


def _loss_precision(t: torch.Tensor) -> torch.Tensor:
    """A bf16/fp16 output of an autocast forward as float32, so losses are summed in float32; other dtypes as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class ConvEncoder(nn.Module):
    """Conv 1→32 s2, Conv 32→64 s2, Conv 64→128 7×7, then μ and log σ² heads (both VAEs)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            WholeMapConv2d(64, 128, 7), nn.Flatten(),  # on the 7×7 map: a matmul
        )
        self.mu = nn.Linear(128, latent_dim)
        self.logvar = nn.Linear(128, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE))
        return self.mu(h), self.logvar(h)


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 1.0) -> torch.Tensor:
    """Per-sample BCE (summed over pixels) + kl_weight · KL divergence to N(0, I) (summed over latents)."""
    recon, mu, logvar = _loss_precision(recon), _loss_precision(mu), _loss_precision(logvar)
    bce = F.binary_cross_entropy(recon.clamp(1e-7, 1 - 1e-7), x, reduction="none").sum(dim=1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    return bce + kl_weight * kl  # × 1.0 is exact: weight 1 is the plain VAE bit for bit


class _VAE(Generator):
    latent_dim: int
    encoder: ConvEncoder
    needs_latent = True
    kl_weight: float = 1.0  # β of a β-VAE

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim)

    def decode(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(x, z), mu, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded from z = μ (the SarNET VAE teacher-forced by the real image)."""
        with evaluating(self):
            recon = self(x)[0]
        return recon.view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = batch[0]
        recon, mu, logvar = self(x)
        return vae_loss(recon, x, mu, logvar, self.kl_weight)

    def prior(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """z ~ N(0, I), drawn on the CPU generator (the same numbers on any device)."""
        param = self._param()
        return torch.randn(n, self.latent_dim, generator=generator, dtype=param.dtype).to(param.device)


class SarNetVAE(_VAE):
    """Conv encoder + SemiDense decoder fed z at every layer (ReLU, ReLU, Sigmoid)."""

    kind = "sarnet_vae"
    arch_keys = ("hidden", "patch")
    sampling_keys = ("threshold",)

    def __init__(self, latent_dim: int, hidden: Sequence[Sequence[int]], patch: int) -> None:
        super().__init__(latent_dim)
        shapes_hidden = hidden_shapes(hidden)
        self.model_args = {"latent_dim": int(latent_dim), "hidden": [[s.channels, s.size, s.patch] for s in shapes_hidden],
                           "patch": int(patch)}
        shapes = (LayerShape(1, IMAGE_SIZE, patch), *shapes_hidden, LayerShape(1, IMAGE_SIZE, patch))
        self.decoder = SemiDenseStack(shapes, ["relu"] * (len(shapes) - 2) + ["sigmoid"], latent_dim=latent_dim)

    def decode(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoding: output patch i from input patches < i and z."""
        return self.decoder(x, z)

    def sample(self, n: int, generator: torch.Generator | None = None, *, threshold: float,
               z: torch.Tensor | None = None, method: str = "incremental") -> torch.Tensor:
        """n images (n, 28, 28) in [0, 1], generated patch by patch from z ~ N(0, I) (or the given z);
        patch 0 stays black."""
        z = self.prior(n, generator) if z is None else z
        start = torch.zeros(len(z), PIXELS, device=z.device, dtype=z.dtype)
        return generate_autoregressive(self.decoder, start, z, first_patch=1, threshold=threshold,
                                       method=method).view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def inpaint(self, images: torch.Tensor, generator: torch.Generator | None, *, keep_patches: int, n_styles: int,
                z_scale: float, threshold: float, method: str = "incremental") -> torch.Tensor:
        """Complete each image from its first `keep_patches` patches in `n_styles` styles (z ~ N(0, I)·z_scale).

        Returns (n_images, n_styles, 28, 28); the kept patches are copied bit for bit.
        """
        if n_styles < 1:
            raise ConfigError(f"n_styles must be >= 1, got {n_styles}")
        flat = images.reshape(len(images), -1)
        if flat.shape[1] != PIXELS:
            raise ConfigError(f"expected images of 28×28 pixels, got {tuple(images.shape)}")
        param = self._param()
        x0 = flat.to(param.device, param.dtype).repeat_interleave(n_styles, dim=0)
        x0[:, self.decoder.layers[0].in_patch_index >= keep_patches] = 0.0
        z = self.prior(len(x0), generator) * z_scale
        out = generate_autoregressive(self.decoder, x0, z, first_patch=keep_patches, threshold=threshold, method=method)
        return out.view(len(images), n_styles, IMAGE_SIZE, IMAGE_SIZE)


class ConvVAE(_VAE):
    """The TensorFlow-tutorial convolutional VAE (the thesis's baseline)."""

    kind = "conv_vae"
    sampling_keys = ("batch_size",)

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.model_args = {"latent_dim": int(latent_dim)}
        self.project = nn.Linear(latent_dim, 128)
        self.deconv = nn.Sequential(
            PointMapConvTranspose2d(128, 64, 7), nn.ReLU(),  # on the 1×1 map: a matmul
            nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
        )

    def decode(self, x: torch.Tensor | None, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(z).view(-1, 128, 1, 1)).view(-1, PIXELS)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *, batch_size: int) -> torch.Tensor:
        """n images (n, 28, 28) decoded from z ~ N(0, I), no threshold, `batch_size` codes at a time."""
        z = self.prior(n, generator)
        with evaluating(self):
            images = torch.cat([self.decode(None, z[i : i + batch_size]) for i in range(0, n, batch_size)])
        return images.view(-1, IMAGE_SIZE, IMAGE_SIZE)


class BetaVAE(ConvVAE):
    """β-VAE (seed 004 §3, docs/baselines.md "β-VAE"): the conv VAE with its KL term weighted by β = `kl_weight`;
    β is the only difference from `conv_vae` (β = 1 trains the same model bit for bit)."""

    kind = "beta_vae"
    arch_keys = ("kl_weight",)

    def __init__(self, latent_dim: int, kl_weight: float) -> None:
        super().__init__(latent_dim)
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)) or not kl_weight > 0:
            raise ConfigError(f"kl_weight must be a number > 0, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        self.model_args = {"latent_dim": int(latent_dim), "kl_weight": float(kl_weight)}
