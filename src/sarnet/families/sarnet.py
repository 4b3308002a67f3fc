"""Simple SarNET (thesis §3.3, §4.1): a SemiDense stack without latent input, and its samplers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from sarnet.core.data import IMAGE_SIZE, PIXELS
from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError
from sarnet.families.base import GenerativeModel, loss_precision
from sarnet.masked.semidense import (ACTIVATIONS, LayerShape, SemiDenseStack, generate_autoregressive, hidden_shapes,
                                    threshold_emit)
from sarnet.masked.semidense import _offsets as patch_offsets  # the incremental sampler's own patch-major offsets


class PrefixForward:
    """The stack's output units of one patch k, each layer computing only its units of patches <= k from the
    prefix of units they may see (patch-major order, masked weights cut once): about (k/n)² of a forward
    pass. For the noise sampler, whose input changes at earlier patches between steps, so that the
    incremental cache of `generate_autoregressive` cannot be reused. Works on (B, units) inputs in
    patch-major order (`order`). Here and not in masked/: the SarNET VAE's stages do not depend on it."""

    def __init__(self, stack: SemiDenseStack) -> None:
        if stack.latent_dim:
            raise ConfigError("PrefixForward is for stacks without a latent input")
        self.order = torch.argsort(stack.layers[0].in_patch_index, stable=True)
        self.in_offsets = patch_offsets(stack.layers[0].in_patch_index, stack.n_patches)
        self.layers = []
        for layer, activation in zip(stack.layers, stack.activations):
            in_order = torch.argsort(layer.in_patch_index, stable=True)
            out_order = torch.argsort(layer.out_patch_index, stable=True)
            weight = layer.masked_weight().detach()[:, : layer.in_features][out_order][:, in_order].contiguous()
            self.layers.append((weight, layer.bias.detach()[out_order].contiguous(),
                                patch_offsets(layer.in_patch_index, layer.n_patches),
                                patch_offsets(layer.out_patch_index, layer.n_patches), ACTIVATIONS[activation], layer.first))

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(B, units of patch k) of the last layer, in patch-major order, from patch-major inputs x."""
        h = x
        for i, (weight, bias, in_offsets, out_offsets, activation, first) in enumerate(self.layers):
            # type (a) units of patches <= k see input patches < k (patch 0 sees itself); type (b) patches <= k
            columns = in_offsets[k] if first and k > 0 else in_offsets[k + 1]
            rows = slice(out_offsets[k] if i == len(self.layers) - 1 else 0, out_offsets[k + 1])
            h = activation(F.linear(h[:, :columns], weight[rows, :columns], bias[rows]))
        return h


class SarNet(GenerativeModel):
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
        out = loss_precision(self(x))
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
                                 refine=refine, method=method)

    @torch.no_grad()
    def sample_noise(self, n: int, generator: torch.Generator | None, *, alpha_max: float, p_earlier: float,
                     threshold: float, refine: bool, batch_size: int = 2048, method: str = "incremental") -> torch.Tensor:
        """Regression sampler, thesis §3.3: per image α = α_max·U[0,1] and noise α·|N(0,1)|.

        At step i the noise is added to input patch i and, with probability `p_earlier`, to each earlier
        patch (drawn anew each step); output patch i+1 is written (pixels < threshold → 0, > 1 → 1).
        The noise never reaches the stored image. Then one refining pass over the whole image.
        "naive" runs the whole stack at every step, as the thesis's notebooks do; "incremental" computes
        only the units of patches <= i+1 (`PrefixForward`), the same function with about a third of the
        work. The noise on earlier patches changes every step, so no step's units can be kept for the next.
        """
        if self.classes:
            raise ConfigError("sample_noise needs a regression SarNet (classes=0); use sample")
        if method not in ("incremental", "naive"):
            raise ConfigError(f"method must be 'incremental' or 'naive', got {method!r}")
        param = self._param()
        stack = self.stack
        patch_index = stack.layers[0].in_patch_index
        clean = threshold_emit(threshold, clip_high=True)
        parts = []
        with evaluating(self):
            # Both methods step over patch-major units, where a patch is a column range.
            order = torch.argsort(patch_index, stable=True)
            inverse, ordered_index = torch.argsort(order), patch_index[order]
            offsets = patch_offsets(patch_index, stack.n_patches)
            if method == "incremental":
                step = PrefixForward(stack)
            else:  # the whole stack on the image in its own order

                def step(x: torch.Tensor, k: int) -> torch.Tensor:
                    return stack(x[:, inverse], None)[:, order[offsets[k] : offsets[k + 1]]]
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                alpha = alpha_max * torch.rand(b, 1, generator=generator)
                noise = (alpha * torch.randn(b, PIXELS, generator=generator).abs()).to(param.device, param.dtype)[:, order]
                img = torch.zeros(b, PIXELS, device=param.device, dtype=param.dtype)
                for i in range(stack.n_patches - 1):
                    chosen = (torch.rand(b, stack.n_patches, generator=generator) < p_earlier).to(param.device)
                    noisy = chosen[:, ordered_index] & (ordered_index < i) | (ordered_index == i)
                    img[:, offsets[i + 1] : offsets[i + 2]] = clean(step(img + noise * noisy, i + 1))
                img = img[:, inverse]
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


USES = "masked/semidense.py"  # the one module this family builds on besides the core and the base (params.yaml's `uses`)
MODELS: dict[str, type[GenerativeModel]] = {SarNet.kind: SarNet}
