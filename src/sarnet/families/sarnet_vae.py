"""SarNET VAE (thesis §3.4, §4.3): the conv encoder and a SemiDense decoder fed z at every layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sarnet.core.data import IMAGE_SIZE, PIXELS
from sarnet.core.errors import ConfigError
from sarnet.families.base import VAEModel
from sarnet.masked.semidense import LayerShape, SemiDenseStack, generate_autoregressive, hidden_shapes


class SarNetVAE(VAEModel):
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


USES = "masked/semidense.py"  # the one module this family builds on besides the core and the base (params.yaml's `uses`)
MODELS: dict[str, type[VAEModel]] = {SarNetVAE.kind: SarNetVAE}
