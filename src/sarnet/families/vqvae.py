"""VQ-VAE with a PixelCNN prior over its codes (seeds 002 §1.2–1.4, 004 §4; docs/baselines.md "VQ-VAE with a PixelCNN prior"), one model.

The autoencoder is the Keras example seed 004 cites: a 7×7 grid of D-dimensional codes, a codebook of
K vectors (nearest neighbour, straight-through gradient), loss MSE/var + codebook + β·commitment on
inputs x − 0.5. The prior is the Keras example's PixelCNN over the 7×7 code indices; its first layer (a
mask-A 7×7 convolution of the one-hot codes) is computed as per-tap lookups in the weight. Training is
two phases of one run: the autoencoder, then the prior on the frozen encoder's codes. Sampling draws
the codes in raster order (a cached sampler, exact against the naive loop on the same uniforms), looks
them up and decodes them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.core.data import IMAGE_SIZE
from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError
from sarnet.core.training import TrainConfig, check_finite
from sarnet.families.base import GenerativeModel
from sarnet.masked.conv import MaskedConv2d, PaddedMap, draw_levels

GRID = 7  # the code map is 7×7 (seed 004: H_l = W_l = 7)


class OneHotMaskedConv(nn.Module):
    """A mask-A k×k convolution over one-hot codes (K input channels), computed as lookups: at p it is the
    bias plus, for every allowed tap t, the column weight[:, code(p + t), t]; codes outside the grid add nothing."""

    def __init__(self, codes: int, channels: int, k: int = 7) -> None:
        super().__init__()
        self.conv = MaskedConv2d(codes, channels, k, "A")  # the weights, the mask and the taps

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        n, h, w = codes.shape
        pad = self.conv.kernel_size[0] // 2
        padded = F.pad(codes, (pad,) * 4, value=-1)
        out = self.conv.bias.view(1, -1, 1, 1).expand(n, -1, h, w)
        for dy, dx in self.conv.taps:
            shifted = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
            table = self.conv.weight[:, :, dy + pad, dx + pad].t()  # (K, C)
            picked = table[shifted.clamp(min=0)] * (shifted >= 0).unsqueeze(-1).to(table.dtype)
            out = out + picked.permute(0, 3, 1, 2)
        return out

    def at(self, codes: torch.Tensor, r: int, c: int) -> torch.Tensor:
        """(N, C) at one position from a (N, 7 + 2·pad, 7 + 2·pad) code map padded with −1."""
        pad = self.conv.kernel_size[0] // 2
        out = self.conv.bias.expand(len(codes), -1)
        for dy, dx in self.conv.taps:
            code = codes[:, r + dy + pad, c + dx + pad]
            column = self.conv.weight[:, :, dy + pad, dx + pad].t()[code.clamp(min=0)]
            out = out + column * (code >= 0).unsqueeze(-1).to(column.dtype)
        return out


MAX_PRIOR_BLOCKS = 64


class CodePrior(nn.Module):
    """The Keras example's PixelCNN over K codes: mask-A 7×7 → C, ReLU; `blocks` residual blocks (1×1 C, ReLU →
    mask-B 3×3 C/2, ReLU → 1×1 C, ReLU, plus the skip; the example has 2); 2 × (1×1 C, ReLU); 1×1 → K logits."""

    def __init__(self, codes: int, channels: int, blocks: int = 2) -> None:
        super().__init__()
        self.codes = codes
        self.first = OneHotMaskedConv(codes, channels)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(channels, channels, 1), MaskedConv2d(channels, channels // 2, 3, "B"),
                           nn.Conv2d(channels // 2, channels, 1)]) for _ in range(blocks))
        self.tail = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(2))
        self.out = nn.Conv2d(channels, codes, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.first(codes))
        for widen, spatial, narrow in self.blocks:
            x = x + F.relu(narrow(F.relu(spatial(F.relu(widen(x))))))
        for layer in self.tail:
            x = F.relu(layer(x))
        return self.out(x)

    @torch.no_grad()
    def sample_codes(self, uniforms: torch.Tensor, temperature: float, method: str = "cached") -> torch.Tensor:
        """(N, 7, 7) codes drawn in raster order at the given (N, 49) uniforms."""
        if method not in ("cached", "naive"):
            raise ConfigError(f"method must be 'cached' or 'naive', got {method!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        param = next(self.parameters())
        n = len(uniforms)
        pad = self.first.conv.kernel_size[0] // 2
        codes = torch.full((n, GRID + 2 * pad, GRID + 2 * pad), -1, dtype=torch.long, device=param.device)
        maps = [PaddedMap(n, spatial.in_channels, 1, param, size=GRID) for _, spatial, _ in self.blocks]
        for p in range(GRID * GRID):
            r, c = divmod(p, GRID)
            if method == "naive":  # the whole network on the codes so far (later positions hold code 0)
                logits = self(codes[:, pad : pad + GRID, pad : pad + GRID].clamp(min=0))[:, :, r, c]
            else:
                logits = self._at(codes, maps, r, c)
            codes[:, r + pad, c + pad] = draw_levels(logits, uniforms[:, p], temperature).to(param.device)
        return codes[:, pad : pad + GRID, pad : pad + GRID]

    def _at(self, codes: torch.Tensor, maps: list[PaddedMap], r: int, c: int) -> torch.Tensor:
        """The logits at (r, c), each layer computed at that position only, from the maps filled before."""

        def pointwise(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, layer.weight.flatten(1), layer.bias)

        x = F.relu(self.first.at(codes, r, c))
        for (widen, spatial, narrow), cache in zip(self.blocks, maps):
            cache.write(r, c, F.relu(pointwise(widen, x)))
            inner = F.relu(torch.addmm(spatial.bias, cache.gather(r, c, spatial.taps), spatial.tap_weight()))
            x = x + F.relu(pointwise(narrow, inner))
        for layer in self.tail:
            x = F.relu(pointwise(layer, x))
        return pointwise(self.out, x)


def perplexity(codes: torch.Tensor, size: int) -> float:
    """exp(entropy of code usage): 1 when one code is used everywhere, `size` when all are used equally."""
    usage = torch.bincount(codes.flatten(), minlength=size).double()
    p = usage / usage.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


class PhasedStep:
    """The autoencoder for `ae_epochs` epochs (Adam at config.lr, × ae_lr_decay per epoch), then the prior on
    the frozen encoder's codes (Adam at prior_lr) for the remaining epochs.

    With the model's `code_restarts`, every autoencoder epoch but the last ends by moving each code no
    encoder output chose during the epoch onto a random encoder output of the epoch's last batch
    (docs/baselines.md "VQ-VAE with a PixelCNN prior": without it most of the codebook never gets used)."""

    def __init__(self, model: "VQVAE", config: TrainConfig, total_steps: int) -> None:
        if config.optimizer != "adam" or config.lr_schedule != "constant" or config.reduction != "mean":
            raise ConfigError("vqvae trains with Adam on mean losses and its own schedule (lr_schedule: constant)")
        if not 0 < model.ae_epochs < config.epochs:
            raise ConfigError(f"vqvae: ae_epochs ({model.ae_epochs}) must leave epochs ({config.epochs}) for the prior")
        self.model = model
        steps_per_epoch = total_steps // config.epochs
        self.ae_steps = model.ae_epochs * steps_per_epoch
        autoencoder = [*model.encoder.parameters(), *model.codebook.parameters(), *model.decoder.parameters()]
        self.ae_optimizer = torch.optim.Adam(autoencoder, lr=config.lr, betas=(config.beta1, 0.999))
        self.ae_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.ae_optimizer, lambda step: model.ae_lr_decay ** (step // steps_per_epoch))
        self.prior_optimizer = torch.optim.Adam(model.prior.parameters(), lr=model.prior_lr)
        self.done = 0
        self.steps_per_epoch = steps_per_epoch
        self.usage = torch.zeros(model.codebook.num_embeddings, dtype=torch.long)  # code counts this epoch

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        x = batch[0]
        autoencoding = self.done < self.ae_steps
        if autoencoding:
            losses, codes, z_e = self.model.autoencoder_terms(x)
        else:
            losses = self.model.prior_loss(x)
        check_finite(losses.mean())
        optimizer = self.ae_optimizer if autoencoding else self.prior_optimizer
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()
        if autoencoding:
            self.ae_schedule.step()
        self.done += 1
        if autoencoding and self.model.code_restarts:
            self._count_and_restart(codes, z_e.detach())
        return {"loss": losses.detach()}

    @torch.no_grad()
    def _count_and_restart(self, codes: torch.Tensor, z_e: torch.Tensor) -> None:
        """Count the codes this step's forward pass chose; at an epoch's end, restart the unchosen ones."""
        self.usage += torch.bincount(codes.flatten().cpu(), minlength=len(self.usage))
        if self.done % self.steps_per_epoch or self.done >= self.ae_steps:
            return  # mid-epoch, or the autoencoder's last epoch: the decoder would never learn a moved code
        dead = (self.usage == 0).nonzero().flatten()
        if len(dead):
            flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
            picks = torch.randint(len(flat), (len(dead),))
            self.model.codebook.weight[dead.to(flat.device)] = flat[picks.to(flat.device)]
        self.usage.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"autoencoder": self.ae_optimizer.state_dict(), "schedule": self.ae_schedule.state_dict(),
                "prior": self.prior_optimizer.state_dict(), "done": self.done, "usage": self.usage.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ae_optimizer.load_state_dict(state["autoencoder"])
        self.ae_schedule.load_state_dict(state["schedule"])
        self.prior_optimizer.load_state_dict(state["prior"])
        self.done = int(state["done"])
        self.usage = state["usage"].clone()


class VQVAE(GenerativeModel):
    """VQ-VAE (Keras example: Conv 32 3×3 s2 → Conv 64 3×3 s2 → Conv D 1×1; ConvT 64 s2 → ConvT 32 s2 →
    ConvT 1) with a codebook of K vectors and a PixelCNN prior over the 7×7 codes (see the module)."""

    kind = "vqvae"
    arch_keys = ("code_dim", "codebook_size", "commitment", "prior_channels", "ae_epochs", "ae_lr_decay", "prior_lr",
                 "prior_blocks", "code_restarts")
    sampling_keys = ("batch_size", "temperature")

    def __init__(self, code_dim: int, codebook_size: int, commitment: float, prior_channels: int, ae_epochs: int,
                 ae_lr_decay: float, prior_lr: float, prior_blocks: int = 2, code_restarts: bool = False) -> None:
        super().__init__()
        for name, value in (("code_dim", code_dim), ("codebook_size", codebook_size), ("prior_channels", prior_channels),
                            ("ae_epochs", ae_epochs), ("prior_blocks", prior_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"vqvae: {name} must be a positive integer, got {value!r}")
        if prior_blocks > MAX_PRIOR_BLOCKS:  # one module each: a forged file's count could be millions
            raise ConfigError(f"vqvae: prior_blocks must be at most {MAX_PRIOR_BLOCKS}, got {prior_blocks}")
        if not isinstance(code_restarts, bool):
            raise ConfigError(f"vqvae: code_restarts must be true or false, got {code_restarts!r}")
        for name, value in (("commitment", commitment), ("ae_lr_decay", ae_lr_decay), ("prior_lr", prior_lr)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"vqvae: {name} must be a number > 0, got {value!r}")
        self.model_args = {"code_dim": int(code_dim), "codebook_size": int(codebook_size), "commitment": float(commitment),
                           "prior_channels": int(prior_channels), "ae_epochs": int(ae_epochs),
                           "ae_lr_decay": float(ae_lr_decay), "prior_lr": float(prior_lr), "prior_blocks": int(prior_blocks),
                           "code_restarts": code_restarts}
        self.commitment, self.ae_epochs, self.ae_lr_decay, self.prior_lr = commitment, ae_epochs, ae_lr_decay, prior_lr
        self.code_restarts = code_restarts
        self.encoder = nn.Sequential(nn.Conv2d(1, 32, 3, 2, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, padding=1),
                                     nn.ReLU(), nn.Conv2d(64, code_dim, 1))
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -0.05, 0.05)  # Keras's default uniform initialiser
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code_dim, 64, 3, 2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, 2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 3, padding=1))
        self.prior = CodePrior(codebook_size, prior_channels, prior_blocks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 784) pixels -> z_e (N, D, 7, 7), from the centred image x − 0.5."""
        return self.encoder(x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE) - 0.5)

    def quantize(self, z_e: torch.Tensor) -> torch.Tensor:
        """The nearest codebook vector's index at every position: (N, 7, 7)."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        return torch.cdist(flat, self.codebook.weight).argmin(dim=1).view(len(z_e), GRID, GRID)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook(codes).permute(0, 3, 1, 2)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, 7, 7) codes -> (N, 28, 28) pixels: the decoder's output + 0.5, clipped to [0, 1]."""
        return (self.decoder(self.lookup(codes)) + 0.5).clamp(0.0, 1.0).view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def autoencoder_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: MSE / batch variance + ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖² (means over elements); the
        decoder's gradient reaches the encoder straight through the quantisation. Also the codes chosen
        (N, 7, 7) and z_e (N, D, 7, 7), which the code restarts count and draw from."""
        target = x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE) - 0.5
        z_e = self.encode(x)
        codes = self.quantize(z_e.detach())
        z_q = self.lookup(codes)
        recon = self.decoder(z_e + (z_q - z_e).detach())
        reconstruction = (recon - target).pow(2).mean(dim=(1, 2, 3)) / target.var().detach().clamp(min=1e-8)
        codebook = (z_q - z_e.detach()).pow(2).mean(dim=(1, 2, 3))
        commitment = (z_e - z_q.detach()).pow(2).mean(dim=(1, 2, 3))
        return reconstruction + codebook + self.commitment * commitment, codes, z_e

    def autoencoder_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image autoencoder loss of `autoencoder_terms`."""
        return self.autoencoder_terms(x)[0]

    def prior_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Per image: the prior's negative log-likelihood of the frozen encoder's codes, in nats per code map."""
        with torch.no_grad():
            codes = self.quantize(self.encode(x))
        return F.cross_entropy(self.prior(codes), codes, reduction="none").sum(dim=(1, 2))

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The test loss: the autoencoder's loss plus the prior's NLL (the phase being trained lowers its part)."""
        return self.autoencoder_loss(batch[0]) + self.prior_loss(batch[0])

    def training_step(self, config: TrainConfig, total_steps: int) -> PhasedStep:
        return PhasedStep(self, config, total_steps)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        with evaluating(self):
            return self.decode_codes(self.quantize(self.encode(x)))

    @torch.no_grad()
    def test_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """Reconstruction errors, codebook perplexity and codes used on these images, the prior's NLL."""
        with evaluating(self):
            codes = self.quantize(self.encode(x))
            prior_nats = float(F.cross_entropy(self.prior(codes), codes, reduction="none").sum(dim=(1, 2)).mean())
            # The prior's NLL of 100 of its own code maps (temperature 1): far above its test NLL, sampling
            # and training would disagree (docs/baselines.md "Audit").
            uniforms = torch.rand(100, GRID * GRID, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            own = self.prior.sample_codes(uniforms, 1.0)
            own_nats = float(F.cross_entropy(self.prior(own), own, reduction="none").sum(dim=(1, 2)).mean())
        return super().test_metrics(x) | {
            "codebook_perplexity": perplexity(codes, self.codebook.num_embeddings),
            "codes_used": float(torch.unique(codes).numel()),
            "prior_test_nll_nats": prior_nats, "prior_test_bits_per_code": prior_nats / (GRID * GRID * math.log(2)),
            "prior_sample_nll_nats": own_nats, "prior_sample_bits_per_code": own_nats / (GRID * GRID * math.log(2))}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *, batch_size: int, temperature: float,
               method: str = "cached") -> torch.Tensor:
        """n images (n, 28, 28): codes from the prior at `temperature`, looked up and decoded."""
        uniforms = torch.rand(n, GRID * GRID, generator=generator, dtype=torch.float64)
        with evaluating(self):
            parts = [self.decode_codes(self.prior.sample_codes(uniforms[i : i + batch_size], temperature, method))
                     for i in range(0, n, batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE)


USES = "masked/conv.py"  # the one module this family builds on besides the core and the base (params.yaml's `uses`)
MODELS: dict[str, type[GenerativeModel]] = {VQVAE.kind: VQVAE}
