"""Independent references shared by the tests, written from the spec's words, not from the library;
then the thesis architecture (params.yaml) as small builders, so tests do not repeat its literals."""

import torch


def unit_patches(channels: int = 1, size: int = 28, patch: int = 4) -> list[int]:
    """Patch of every unit u = c·size² + r·size + col of an NCHW-flattened layer:
    (r // patch)·grid + (col // patch), patches numbered in raster order over the grid."""
    grid = size // patch
    out = []
    for u in range(channels * size * size):
        r = (u % (size * size)) // size
        col = u % size
        out.append((r // patch) * grid + (col // patch))
    return out


def reference_sample(decoder, z: torch.Tensor, threshold: float) -> torch.Tensor:
    """docs/protocol.md "Sampling", as a plain loop: start all-zero; for i = 1..48 run the decoder on
    the whole image, take output patch i, set pixels < threshold to 0, write it in. Patch 0 stays black."""
    patch = torch.tensor(unit_patches())
    img = torch.zeros(len(z), 784, dtype=z.dtype)
    with torch.no_grad():
        for i in range(1, 49):
            out = decoder(img, z)
            units = patch == i
            vals = out[:, units]
            img[:, units] = torch.where(vals < threshold, torch.zeros_like(vals), vals)
    return img.view(-1, 28, 28)


def reference_noise_sample(model, n: int, seed: int, alpha_max: float, p_earlier: float, threshold: float,
                           refine: bool) -> torch.Tensor:
    """docs/protocol.md "Sampling" (thesis §3.3), the simple SarNET's noise sampler as a plain loop over
    patches and images, drawing from one torch generator in this order: α (n, 1) = α_max·U[0,1];
    |N(0,1)| (n, 784); then at each step i = 0..47 one U[0,1] per (image, patch). At step i, input patch i
    and each earlier patch whose draw is < p_earlier get α·|N|; the model runs on the noisy copy; output
    patch i+1 is written, < threshold → 0, > 1 → 1. Then, with `refine`, one clean pass of the whole image."""
    g = torch.Generator().manual_seed(seed)
    patch = torch.tensor(unit_patches())
    n_patches = int(patch.max()) + 1
    alpha = alpha_max * torch.rand(n, 1, generator=g)
    noise = alpha * torch.randn(n, 784, generator=g).abs()

    def clean(values):
        return torch.where(values < threshold, torch.zeros_like(values), values).clamp(max=1.0)

    img = torch.zeros(n, 784)
    with torch.no_grad():
        for i in range(n_patches - 1):
            earlier = torch.rand(n, n_patches, generator=g) < p_earlier
            noisy = img.clone()
            for b in range(n):
                for q in range(i + 1):
                    if q == i or earlier[b, q]:
                        noisy[b, patch == q] += noise[b, patch == q]
            out = model(noisy)
            img[:, patch == i + 1] = clean(out[:, patch == i + 1])
        if refine:
            img = clean(model(img))
    return img.view(n, 28, 28)


# ---------------------------------------------------------------- the thesis architecture and sampling settings

HIDDEN = [[2, 14, 2], [2, 28, 4]]  # params.yaml `hidden` of sarnet and sarnet_vae
PATCH = 4
SAMPLING = {  # params.yaml `sampling`
    "sarnet_vae": {"threshold": 0.105},
    "sarnet": {"alpha_max": 0.65, "p_earlier": 0.3, "threshold": 0.15, "refine": True, "temperature": 0.3},
    "conv_vae": {"batch_size": 2000},
    "inpaint": {"keep_patches": 24, "n_styles": 8, "z_scale": 0.6667, "threshold": 0.15},
}


def vae(latent_dim: int):
    """A SarNET VAE of the thesis architecture."""
    from sarnet.families.sarnet_vae import SarNetVAE

    return SarNetVAE(latent_dim, HIDDEN, PATCH)


def sarnet(classes: int = 0, loss_power: float = 1.0, hidden=HIDDEN, ssim: bool | None = None, patch: int = PATCH):
    """A simple SarNET of the thesis architecture (regression unless `classes`; SSIM in the loss
    unless `ssim` is False or the model has classes ≥ 2)."""
    from sarnet.families.sarnet import SarNet

    return SarNet(hidden, patch, classes, loss_power, classes < 2 if ssim is None else ssim)


def spread_vae(latent_dim: int, seed: int = 0):
    """A SarNET VAE whose outputs straddle the threshold (some pixels zeroed, some kept), so the
    threshold and the feedback of written patches matter; default init gives ~0.5 everywhere."""
    torch.manual_seed(seed)
    model = vae(latent_dim)
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.weight.mul_(2.5)
        model.decoder.layers[-1].bias.uniform_(-3.5, 1.5)
    return model


def reference_row_lstm_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """A Row LSTM layer written with torch's convolutions, channels-first (N, 2h, 28, 28), row by row:
    the masked width-3 input-to-state convolution, the width-3 convolution of the row above's state,
    the LSTM cell, and the 1×1 projection added back."""
    import torch.nn.functional as F

    weight = layer.input_to_state.weight.clone()
    weight[..., 2] = 0  # the (c − 1, c) row mask
    gates_in = F.conv2d(x, weight, layer.input_to_state.bias, padding=(0, 1))
    h = torch.zeros(len(x), layer.hidden, x.shape[3], dtype=x.dtype)
    c = torch.zeros_like(h)
    rows = []
    for r in range(x.shape[2]):
        gates = gates_in[:, :, r, :] + F.conv1d(h, layer.state_to_state.weight, layer.state_to_state.bias, padding=1)
        i, f, o, g = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        rows.append(h)
    return x + F.conv2d(torch.stack(rows, dim=2), layer.project.weight, layer.project.bias)
