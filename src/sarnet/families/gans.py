"""The seeds' GANs (docs/baselines.md "Vanilla GAN", "DCGAN"): a vanilla MLP GAN and a DCGAN, trained by the project's loop
(`training.fit`) through their own two-optimiser step.

Both players output logits and minimise binary cross-entropy; the generator's is the non-saturating
form (its fakes labelled real). Images enter the networks in [−1, 1] for a tanh generator, in [0, 1]
for the seed-003 DCGAN (a sigmoid generator), and leave as [0, 1] pixels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.core.data import IMAGE_SIZE
from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError
from sarnet.core.training import TrainConfig, check_finite, make_optimizer
from sarnet.families.base import GenerativeModel


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Per-sample binary cross-entropy of (B, 1) logits against one label."""
    logits = logits.view(-1)
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")


class AdversarialStep:
    """One discriminator step on a batch of B real images and B fakes, then one generator step on 2B
    fresh fakes labelled real (Keras-GAN's 16 real + 16 fake, then 32). Each loss is checked before
    its player moves."""

    def __init__(self, gan: "_GAN", config: TrainConfig) -> None:
        self.gan = gan
        self.discriminator_optimizer = make_optimizer(gan.discriminator, config)
        self.generator_optimizer = make_optimizer(gan.generator_net, config)

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        gan = self.gan
        real = gan.to_model_space(batch[0])
        b = len(real)
        fake = gan.generator_net(gan.noise(b))
        d_losses = 0.5 * (_bce(gan.discriminator(real), 1.0) + _bce(gan.discriminator(fake.detach()), 0.0))
        check_finite(d_losses.mean())
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        d_losses.mean().backward()
        self.discriminator_optimizer.step()

        g_losses = _bce(gan.discriminator(gan.generator_net(gan.noise(2 * b))), 1.0)
        check_finite(g_losses.mean())
        self.generator_optimizer.zero_grad(set_to_none=True)
        g_losses.mean().backward()
        self.generator_optimizer.step()
        # the loop averages per real image: the 2B generator losses as B pair means
        return {"d_loss": d_losses.detach(), "g_loss": g_losses.detach().view(2, b).mean(dim=0)}

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator_optimizer.state_dict(),
                "generator": self.generator_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator_optimizer.load_state_dict(state["discriminator"])
        self.generator_optimizer.load_state_dict(state["generator"])


class _GAN(GenerativeModel):
    """A generator network (noise -> (B, 1, 28, 28) images in model space) and a discriminator (logits)."""

    signed: ClassVar[bool] = True  # networks see [−1, 1] images (a tanh generator); else [0, 1]
    reconstructs = False  # nothing maps an image back to its noise
    sampling_keys = ("batch_size",)
    noise_dim: int
    generator_net: nn.Module
    discriminator: nn.Module

    def to_model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 784) [0, 1] pixels -> (B, 1, 28, 28) as the networks see images."""
        x = pixels.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
        return x * 2.0 - 1.0 if self.signed else x

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Generator output -> (B, 28, 28) pixels in [0, 1]."""
        images = (images + 1.0) / 2.0 if self.signed else images
        return images.clamp(0.0, 1.0).view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I), drawn on the CPU (the same numbers on any device), moved to the model's device."""
        param = self._param()
        return torch.randn(n, self.noise_dim, generator=generator, dtype=param.dtype).to(param.device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator_net(z)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-sample discriminator loss on real images and as many fresh fakes (the loop's test loss:
        how well the discriminator tells held-out real images from the generator's)."""
        real = self.to_model_space(batch[0])
        fake = self.generator_net(self.noise(len(real)))
        return 0.5 * (_bce(self.discriminator(real), 1.0) + _bce(self.discriminator(fake), 0.0))

    def training_step(self, config: TrainConfig, total_steps: int) -> AdversarialStep:
        """The loop's step for this model: a discriminator step, then a generator step."""
        if config.optimizer != "adam" or config.lr_schedule != "constant" or config.reduction != "mean":
            raise ConfigError(f"{self.kind} trains with Adam at a constant rate on mean losses "
                              f"(got optimizer {config.optimizer}, lr_schedule {config.lr_schedule}, "
                              f"reduction {config.reduction})")
        return AdversarialStep(self, config)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *, batch_size: int) -> torch.Tensor:
        """n images (n, 28, 28) in [0, 1] from z ~ N(0, I); BatchNorm uses its running statistics."""
        z = self.noise(n, generator)
        with evaluating(self):
            images = [self.to_pixels(self.generator_net(z[i : i + batch_size])) for i in range(0, n, batch_size)]
        return torch.cat(images) if images else torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE)


def _check_positive(kind: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{kind}: {name} must be a positive integer, got {value!r}")


class GanMLP(_GAN):
    """Vanilla GAN of seed 003 §1 (Keras-GAN's layers): G 100 → 256 → 512 → 1024 → 784, each hidden layer
    Linear → LeakyReLU(0.2) → BatchNorm (Keras momentum 0.8 = torch 0.2, eps 1e-3), tanh out;
    D 784 → 512 → 256 → 1 with LeakyReLU(0.2). 1,489,936 trainable generator parameters and 533,505
    discriminator parameters, as the seed's summaries."""

    kind = "gan_mlp"
    arch_keys = ("noise_dim",)

    def __init__(self, noise_dim: int) -> None:
        super().__init__()
        _check_positive(self.kind, noise_dim=noise_dim)
        self.noise_dim = noise_dim
        self.model_args = {"noise_dim": int(noise_dim)}
        layers: list[nn.Module] = []
        width_in = noise_dim
        for width in (256, 512, 1024):
            layers += [nn.Linear(width_in, width), nn.LeakyReLU(0.2), nn.BatchNorm1d(width, momentum=0.2, eps=1e-3)]
            width_in = width
        self.generator_net = nn.Sequential(*layers, nn.Linear(1024, IMAGE_SIZE**2), nn.Tanh(),
                                           nn.Unflatten(1, (1, IMAGE_SIZE, IMAGE_SIZE)))
        self.discriminator = nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_SIZE**2, 512), nn.LeakyReLU(0.2),
                                           nn.Linear(512, 256), nn.LeakyReLU(0.2), nn.Linear(256, 1))


def _init_dcgan(module: nn.Module) -> None:
    """pytorch/examples' DCGAN init: conv and linear weights N(0, 0.02), BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(_GAN):
    """DCGAN (seed 003 §2, docs/baselines.md "DCGAN"), two architectures:

    - `tf_tutorial` (the default here at `width` 128, half the tutorial's 256): G Dense → 7·7·width → BN →
      LeakyReLU(0.3) → ConvT width/2 5×5 → BN → LReLU → ConvT width/4 5×5 s2 → BN → LReLU → ConvT 1 5×5 s2,
      tanh; D Conv width/4 5×5 s2 → LReLU(0.3) → Dropout 0.3 → Conv width/2 5×5 s2 → LReLU → Dropout → Dense 1.
    - `seed003` (noise_dim 25, `width` 256: 685,121 generator and 102,833 discriminator parameters, as the
      seed's summaries): G 5×5×1 → ConvT 256 4×4 → 8² → ConvT 128 4×4 s2 → 16² → ConvT 64 4×4 s2 → 32² →
      Conv 32 3×3 → 30² → Conv 16 3×3 → 28² → Conv 1 3×3 same, sigmoid; BN (momentum 0.5) and
      LeakyReLU(0.2) after each hidden layer; D Conv 128 3×3 s2 → Conv 64 s2 → Conv 32 → Conv 16 → Dense 32
      → Dense 1, ReLU. Images in [0, 1].
    Weights start N(0, 0.02) (pytorch/examples).
    """

    kind = "dcgan"
    arch_keys = ("arch", "noise_dim", "width")

    def __init__(self, arch: str, noise_dim: int, width: int) -> None:
        super().__init__()
        _check_positive(self.kind, noise_dim=noise_dim, width=width)
        if arch not in ("tf_tutorial", "seed003"):
            raise ConfigError(f"dcgan: arch must be tf_tutorial or seed003, got {arch!r}")
        if width % 16:
            raise ConfigError(f"dcgan: width must be a multiple of 16, got {width}")
        self.noise_dim = noise_dim
        self.model_args = {"arch": arch, "noise_dim": int(noise_dim), "width": int(width)}
        if arch == "tf_tutorial":
            self.generator_net, self.discriminator = self._tf_tutorial(noise_dim, width)
        else:
            if noise_dim != 25:
                raise ConfigError(f"dcgan: the seed003 generator reshapes 25-d noise to 5×5, got noise_dim {noise_dim}")
            self.signed = False
            self.generator_net, self.discriminator = self._seed003(width)
        self.apply(_init_dcgan)

    @staticmethod
    def _tf_tutorial(noise_dim: int, width: int) -> tuple[nn.Module, nn.Module]:
        def up(c_in: int, c_out: int, stride: int) -> list[nn.Module]:  # Keras "same" padding
            return [nn.ConvTranspose2d(c_in, c_out, 5, stride, padding=2, output_padding=stride - 1, bias=False),
                    nn.BatchNorm2d(c_out, momentum=0.01, eps=1e-3), nn.LeakyReLU(0.3)]

        generator = nn.Sequential(
            nn.Linear(noise_dim, 7 * 7 * width, bias=False), nn.BatchNorm1d(7 * 7 * width, momentum=0.01, eps=1e-3),
            nn.LeakyReLU(0.3), nn.Unflatten(1, (width, 7, 7)),
            *up(width, width // 2, 1), *up(width // 2, width // 4, 2),
            nn.ConvTranspose2d(width // 4, 1, 5, 2, padding=2, output_padding=1, bias=False), nn.Tanh(),
        )
        discriminator = nn.Sequential(
            nn.Conv2d(1, width // 4, 5, 2, padding=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            nn.Conv2d(width // 4, width // 2, 5, 2, padding=2), nn.LeakyReLU(0.3), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(width // 2 * 7 * 7, 1),
        )
        return generator, discriminator

    @staticmethod
    def _seed003(width: int) -> tuple[nn.Module, nn.Module]:
        c = [width, width // 2, width // 4, width // 8, width // 16]

        def block(layer: nn.Module, channels: int) -> list[nn.Module]:
            return [layer, nn.BatchNorm2d(channels, momentum=0.5, eps=1e-3), nn.LeakyReLU(0.2)]

        generator = nn.Sequential(
            nn.Unflatten(1, (1, 5, 5)),
            *block(nn.ConvTranspose2d(1, c[0], 4), c[0]),
            *block(nn.ConvTranspose2d(c[0], c[1], 4, 2, padding=1), c[1]),
            *block(nn.ConvTranspose2d(c[1], c[2], 4, 2, padding=1), c[2]),
            *block(nn.Conv2d(c[2], c[3], 3), c[3]),
            *block(nn.Conv2d(c[3], c[4], 3), c[4]),
            nn.Conv2d(c[4], 1, 3, padding=1), nn.Sigmoid(),
        )
        discriminator = nn.Sequential(
            nn.Conv2d(1, 128, 3, 2, padding=1), nn.ReLU(), nn.Conv2d(128, 64, 3, 2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 32, 3), nn.ReLU(), nn.Conv2d(32, 16, 3), nn.ReLU(),
            nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 1),
        )
        return generator, discriminator


USES = "families/base.py"  # the one module this family builds on besides the core and the base (params.yaml's `uses`)
MODELS: dict[str, type[GenerativeModel]] = {cls.kind: cls for cls in (GanMLP, DCGAN)}
