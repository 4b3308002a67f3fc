"""The seeds' autoregressive pixel models (docs/baselines.md "PixelCNN", "PixelRNN (Row LSTM)"): PixelCNN and PixelRNN (Row LSTM) over 256
grey levels, each with an exact cached sampler and a likelihood.

Both read the image in raster order: the logits at pixel p depend only on the pixels before p (masked
convolutions; type A excludes the centre tap, type B includes it). Sampling draws pixel p by the
inverse CDF of softmax(logits / T) at a uniform drawn up front on the CPU generator, so the cached
sampler (each layer's activation at a position computed once, when the inputs it may see are final:
about one forward pass per image) and the naive one (the whole network once per pixel, as the seeds'
code does) meet the same draws and give the same images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sarnet.core.data import IMAGE_SIZE, PIXELS
from sarnet.core.device import evaluating
from sarnet.core.errors import ConfigError
from sarnet.families.base import GenerativeModel
from sarnet.masked.conv import MaskedConv2d, PaddedMap, draw_levels


SELF_NLL_IMAGES = 100  # own samples scored after training: ~1 s for the cached samplers on 2 cores


class _PixelModel(GenerativeModel):
    """A 256-level autoregressive model of 28×28 images: logits (N, levels, 28, 28) from (N, 784) pixels."""

    sampling_keys = ("batch_size", "temperature")
    reconstructs = False  # it predicts each pixel from the real ones before it; no image is mapped back
    levels: int

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 784) pixels in [0, 1] -> (N, 28, 28) grey levels 0..levels−1."""
        return (x * (self.levels - 1)).round().long().clamp_(0, self.levels - 1).view(-1, IMAGE_SIZE, IMAGE_SIZE)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Per-image negative log-likelihood in nats (cross-entropy summed over the 784 pixels)."""
        x = batch[0]
        return F.cross_entropy(self.logits(x), self.targets(x), reduction="none").sum(dim=(1, 2))

    @torch.no_grad()
    def test_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """Test NLL in nats per image and in bits per dimension (nats / (784 · ln 2)); beside it the NLL
        of 100 of the model's own samples (temperature 1). A good test NLL with samples the model finds
        far less likely than test images means sampling and training disagree (docs/baselines.md "Audit")."""
        with evaluating(self):
            nats = float(self.loss((x,)).mean())
            own = self.sample(SELF_NLL_IMAGES, torch.Generator().manual_seed(0), batch_size=SELF_NLL_IMAGES, temperature=1.0)
            own_nats = float(self.loss((own.reshape(len(own), PIXELS).to(x.device, x.dtype),)).mean())
        bits = PIXELS * math.log(2)
        return {"test_nll_nats": nats, "test_bits_per_dim": nats / bits,
                "sample_nll_nats": own_nats, "sample_bits_per_dim": own_nats / bits}

    def _images(self, levels: torch.Tensor) -> torch.Tensor:
        return levels.to(torch.float32) / (self.levels - 1)

    @torch.no_grad()
    def sample_levels(self, uniforms: torch.Tensor, temperature: float, method: str = "cached") -> torch.Tensor:
        """(N, 784) grey levels drawn at the given (N, 784) uniforms, raster order."""
        if method not in ("cached", "naive"):
            raise ConfigError(f"method must be 'cached' or 'naive', got {method!r}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        with evaluating(self):  # no_grad from the decorator
            return (self._cached if method == "cached" else self._naive)(uniforms, temperature)

    def _naive(self, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
        param = self._param()
        levels = torch.zeros(len(uniforms), PIXELS, dtype=torch.long)
        for p in range(PIXELS):
            pixels = self._images(levels).to(param.device, param.dtype)
            logits = self.logits(pixels)[:, :, p // IMAGE_SIZE, p % IMAGE_SIZE]
            levels[:, p] = draw_levels(logits, uniforms[:, p], temperature)
        return levels

    def _cached(self, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, *, batch_size: int, temperature: float,
               method: str = "cached") -> torch.Tensor:
        """n images (n, 28, 28) with values k/255, `batch_size` at a time."""
        uniforms = torch.rand(n, PIXELS, generator=generator, dtype=torch.float64)
        parts = [self._images(self.sample_levels(uniforms[i : i + batch_size], temperature, method))
                 for i in range(0, n, batch_size)]
        return (torch.cat(parts) if parts else torch.zeros(0, PIXELS)).view(n, IMAGE_SIZE, IMAGE_SIZE)


MAX_ARG = 4096  # blocks and layers are Python loops (a meta-device build cannot size them cheaply): bounded here


def _positive(kind: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ARG:
            raise ConfigError(f"{kind}: {name} must be an integer in 1..{MAX_ARG}, got {value!r}")


def _gate(pre: torch.Tensor, dim: int) -> torch.Tensor:
    """tanh(a) · σ(b) of the two halves of `pre` along `dim` (the gated PixelCNN's unit)."""
    a, b = pre.chunk(2, dim=dim)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedBlock(nn.Module):
    """One gated block (van den Oord et al. 2016b) of C channels, without a blind spot. The vertical stack
    at row r sees only rows above r: its 2×3 convolution reads its own input's rows r − 1 and r, which
    already see only rows above. The horizontal stack at (r, c) reads its input at (r, c − 1) and (r, c),
    plus a 1×1 link from the vertical stack at (r, c), and adds its gated output back (residual)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.vertical = nn.Conv2d(channels, 2 * channels, (2, 3))
        self.link = nn.Conv2d(channels, 2 * channels, 1)
        self.horizontal = nn.Conv2d(channels, 2 * channels, (1, 2))
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = _gate(self.vertical(F.pad(v, (1, 1, 1, 0))), dim=1)
        h = h + self.out(_gate(self.horizontal(F.pad(h, (1, 0, 0, 0))) + self.link(v), dim=1))
        return v, h

    def horizontal_weight(self) -> torch.Tensor:
        """The horizontal convolution's taps c − 1, c as a (2·C, 2C) matrix (tap-major)."""
        return self.horizontal.weight[:, :, 0].permute(2, 1, 0).reshape(-1, self.horizontal.out_channels)


FIRST_K = 7  # the first layer's reach: 4 rows above (7 wide) and 3 pixels to the left, as a 7×7 mask A


class PixelCNN(_PixelModel):
    """PixelCNN (docs/baselines.md "PixelCNN"), two stacks by `gated`.

    Plain (the seeds'): mask-A 7×7 conv 1 → C, ReLU; `blocks` residual blocks h + ReLU(mask-B 3×3 conv
    C → C); 1×1 conv C → 2C, ReLU; 1×1 conv → `levels` logits. Each 3×3 block reaches one row up and one
    column right of it, so pixels up and to the right beyond that diagonal are never seen (the blind spot).
    Gated: a first layer whose vertical stack reads the 4 rows above (7 wide) and whose horizontal stack
    reads the 3 pixels to the left, both gated, then `blocks` `GatedBlock`s, ReLU and the same head: every
    pixel above within the blocks' reach is seen. No BatchNorm: in training mode its batch statistics would
    leak later pixels into earlier ones."""

    kind = "pixelcnn"
    arch_keys = ("channels", "blocks", "levels", "gated")

    def __init__(self, channels: int, blocks: int, levels: int, gated: bool = False) -> None:
        super().__init__()
        _positive(self.kind, channels=channels, blocks=blocks, levels=levels)
        if not isinstance(gated, bool):
            raise ConfigError(f"{self.kind}: gated must be true or false, got {gated!r}")
        self.model_args = {"channels": int(channels), "blocks": int(blocks), "levels": int(levels), "gated": gated}
        self.levels, self.gated = levels, gated
        if gated:
            self.first_vertical = nn.Conv2d(1, 2 * channels, (FIRST_K // 2 + 1, FIRST_K))
            self.first_link = nn.Conv2d(channels, 2 * channels, 1)
            self.first_horizontal = nn.Conv2d(1, 2 * channels, (1, FIRST_K // 2))
            self.blocks = nn.ModuleList(GatedBlock(channels) for _ in range(blocks))
        else:
            self.first = MaskedConv2d(1, channels, FIRST_K, "A")
            self.blocks = nn.ModuleList(MaskedConv2d(channels, channels, 3, "B") for _ in range(blocks))
        self.head = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1), nn.ReLU(), nn.Conv2d(2 * channels, levels, 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
        if self.gated:
            reach = FIRST_K // 2
            # rows r − 4..r − 1 for row r: pad 4 above, drop the last output row (it would see row 27 itself)
            v = _gate(self.first_vertical(F.pad(x, (reach, reach, reach + 1, 0)))[:, :, :IMAGE_SIZE], dim=1)
            h = _gate(self.first_horizontal(F.pad(x, (reach, 0, 0, 0)))[:, :, :, :IMAGE_SIZE] + self.first_link(v), dim=1)
            for block in self.blocks:
                v, h = block(v, h)
            return self.head(F.relu(h))
        h = F.relu(self.first(x))
        for block in self.blocks:
            h = h + F.relu(block(h))
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def _head_at(self, h: torch.Tensor) -> torch.Tensor:
        head_in, head_out = self.head[0], self.head[2]
        return F.linear(F.relu(F.linear(h, head_in.weight.flatten(1), head_in.bias)), head_out.weight.flatten(1), head_out.bias)

    def _cached(self, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
        return (self._cached_gated if self.gated else self._cached_plain)(uniforms, temperature)

    def _cached_plain(self, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
        """Position by position: the first layer's and every block's activation at p from the maps of the
        positions before (and, for type B, at) p, then the head at p; each computed once."""
        param = self._param()
        n = len(uniforms)
        pixels = PaddedMap(n, 1, 3, param)
        maps = [PaddedMap(n, self.first.out_channels, 1, param) for _ in range(len(self.blocks) + 1)]
        weights = [(self.first.tap_weight(), self.first.bias)] + [(b.tap_weight(), b.bias) for b in self.blocks]
        levels = torch.zeros(n, PIXELS, dtype=torch.long)
        for p in range(PIXELS):
            r, c = divmod(p, IMAGE_SIZE)
            w, b = weights[0]
            h = F.relu(torch.addmm(b, pixels.gather(r, c, self.first.taps), w))
            maps[0].write(r, c, h)
            for i, block in enumerate(self.blocks):
                w, b = weights[i + 1]
                h = h + F.relu(torch.addmm(b, maps[i].gather(r, c, block.taps), w))
                maps[i + 1].write(r, c, h)
            levels[:, p] = draw_levels(self._head_at(h), uniforms[:, p], temperature)
            pixels.write(r, c, self._images(levels[:, p : p + 1]).to(param.device, param.dtype))
        return levels

    def _cached_gated(self, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
        """Row by row, then pixel by pixel. The vertical stacks of row r see only rows above it, so once
        row r − 1 is drawn they are computed for the whole row at once (each layer's 2-row strip), with
        their links into the horizontal stacks. Then, pixel by pixel, each horizontal layer at (r, c) from
        its input at (r, c − 1) and (r, c) and the link: about one forward pass per image in all."""
        param = self._param()
        n, size, reach = len(uniforms), IMAGE_SIZE, FIRST_K // 2
        channels = self.first_link.in_channels
        # Vertical inputs channels-first with a zero border (pixels: 4 rows above, 3 columns each side;
        # each layer's output: 1 row above, 1 column each side), so a row's strip is one slice.
        pixels = torch.zeros(n, 1, size + reach + 1, size + 2 * reach, dtype=param.dtype, device=param.device)
        # The input of each block's vertical stack (the last block's output feeds only its own link).
        verticals = [torch.zeros(n, channels, size + 1, size + 2, dtype=param.dtype, device=param.device)
                     for _ in self.blocks]
        # Each block's horizontal input at (r, c − 1) is kept as `lefts[i]` (zero at c = 0), its taps as
        # two matrices; the first layer's taps c − 3..c − 1 are read from `pixels`' row being drawn.
        w_first = self.first_horizontal.weight[:, 0, 0].t()  # (3 taps, 2C)
        w_blocks = [(*block.horizontal_weight().split(channels), block.out.weight.flatten(1).t(), block.out.bias)
                    for block in self.blocks]

        def link_row(link: nn.Conv2d, v: torch.Tensor, horizontal_bias: torch.Tensor) -> torch.Tensor:
            """(28, N, 2C): the link from a row of the vertical stack (N, C, 1, 28) plus the horizontal
            convolution's bias, column-major and contiguous (a column's (N, 2C) is then one block)."""
            columns = v[:, :, 0].permute(2, 0, 1).reshape(size * n, channels)
            return torch.addmm(link.bias + horizontal_bias, columns, link.weight.flatten(1).t()).view(size, n, -1)

        levels = torch.zeros(n, PIXELS, dtype=torch.long)
        for r in range(size):
            v = _gate(self.first_vertical(pixels[:, :, r : r + reach + 1]), dim=1)  # (N, C, 1, 28)
            links = [link_row(self.first_link, v, self.first_horizontal.bias)]
            for i, block in enumerate(self.blocks):
                verticals[i][:, :, r + 1, 1 : size + 1] = v[:, :, 0]
                v = _gate(block.vertical(verticals[i][:, :, r : r + 2]), dim=1)
                links.append(link_row(block.link, v, block.horizontal.bias))
            lefts = [torch.zeros(n, channels, dtype=param.dtype, device=param.device) for _ in self.blocks]
            for c in range(size):
                h = _gate(torch.addmm(links[0][c], pixels[:, 0, r + reach + 1, c : c + reach], w_first), dim=1)
                for i, ((w_left, w_here, w_out, b_out), link) in enumerate(zip(w_blocks, links[1:])):
                    pre = torch.addmm(link[c], lefts[i], w_left).addmm_(h, w_here)
                    lefts[i] = h
                    h = h + torch.addmm(b_out, _gate(pre, dim=1), w_out)
                p = r * size + c
                levels[:, p] = draw_levels(self._head_at(F.relu(h)), uniforms[:, p], temperature)
                pixels[:, 0, r + reach + 1, c + reach] = self._images(levels[:, p]).to(param.device, param.dtype)
        return levels


class RowLSTM(nn.Module):
    """One Row LSTM layer (van den Oord et al. 2016a), residual: gates from a width-3 row convolution of the
    layer input masked to (c − 1, c) and an unmasked width-3 convolution of the previous row's state;
    rows processed top to bottom; a 1×1 projection of the state added back to the input."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input_to_state = nn.Conv2d(2 * hidden, 4 * hidden, (1, 3), padding=(0, 1))
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)
        self.project = nn.Conv2d(hidden, 2 * hidden, 1)

    def cell(self, gates: torch.Tensor, c_prev: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM update from gate pre-activations (input, forget, output, candidate; 4h along `dim`) and c of the row above."""
        ifo, g = gates.split([3 * self.hidden, self.hidden], dim=dim)
        i, f, o = torch.sigmoid(ifo).chunk(3, dim=dim)  # one sigmoid for the three gates: the sampler calls this per pixel
        c = torch.addcmul(f * c_prev, i, torch.tanh(g))
        return o * torch.tanh(c), c

    def state_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The state-to-state convolution as a (3h, 4h) matrix over the row above's taps c − 1, c, c + 1
        (tap-major, as the `above` windows of `forward`), and its bias."""
        return self.state_to_state.weight.permute(2, 1, 0).reshape(3 * self.hidden, 4 * self.hidden), self.state_to_state.bias

    def input_weight(self) -> torch.Tensor:
        """The masked input-to-state convolution's two live taps, c − 1 and c, as a (2·2h, 4h) matrix (tap-major)."""
        return self.input_to_state.weight[:, :, 0, :2].permute(2, 1, 0).reshape(-1, 4 * self.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 28, 28, 2h) channels-last in and out. The convolutions are written as matrix products over
        channels-last rows: on 2 cores torch's small convolutions (and the row-select backward, which
        zero-fills the whole gate map once per row) cost 1.4–2× more per training step."""
        n, hidden = len(x), self.hidden
        left = F.pad(x, (0, 0, 1, 0))[:, :, :IMAGE_SIZE]  # the input at column c − 1
        gates_in = torch.addmm(self.input_to_state.bias, torch.cat([left, x], dim=3).reshape(-1, 4 * hidden),
                               self.input_weight()).view(n, IMAGE_SIZE, IMAGE_SIZE, 4 * hidden)
        w_state, b_state = self.state_weight()
        h = torch.zeros(n, IMAGE_SIZE, hidden, dtype=x.dtype, device=x.device)
        c = torch.zeros_like(h)
        rows = []
        for gates_row in gates_in.unbind(1):
            padded = F.pad(h, (0, 0, 1, 1))
            above = torch.cat([padded[:, :IMAGE_SIZE], padded[:, 1 : IMAGE_SIZE + 1], padded[:, 2:]], dim=2)
            h, c = self.cell(gates_row + F.linear(above, w_state.t(), b_state), c, dim=2)
            rows.append(h)
        states = torch.stack(rows, dim=1)
        return x + F.linear(states, self.project.weight.flatten(1), self.project.bias)


class PixelRNN(_PixelModel):
    """PixelRNN with Row LSTM layers (docs/baselines.md "PixelRNN (Row LSTM)"): mask-A 7×7 conv 1 → 2h; `layers` residual Row LSTM
    layers of h units; ReLU, 1×1 → 32, ReLU, 1×1 32 → 32, 1×1 → `levels` logits. Initial states are zero."""

    kind = "pixelrnn_row"
    arch_keys = ("hidden", "layers", "levels")

    def __init__(self, hidden: int, layers: int, levels: int) -> None:
        super().__init__()
        _positive(self.kind, hidden=hidden, layers=layers, levels=levels)
        self.model_args = {"hidden": int(hidden), "layers": int(layers), "levels": int(levels)}
        self.levels = levels
        self.first = MaskedConv2d(1, 2 * hidden, 7, "A")
        self.rows = nn.ModuleList(RowLSTM(hidden) for _ in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(2 * hidden, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
                                  nn.Conv2d(32, levels, 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x.view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)).permute(0, 2, 3, 1)  # channels-last for the rows
        for layer in self.rows:
            h = layer(h)
        return self.head(h.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def _head_at(self, x: torch.Tensor) -> torch.Tensor:
        """The head at one position, (N, 2h) -> (N, levels): its 1×1 convolutions as matrix products."""
        for conv in self.head[1::2]:
            x = F.linear(F.relu(x), conv.weight.flatten(1), conv.bias)
        return x

    def _cached(self, uniforms: torch.Tensor, temperature: float) -> torch.Tensor:
        """Row by row, then pixel by pixel. Once row r − 1 is drawn, every layer's state of that row is
        final, so each layer's state-to-state gates for row r are one product for the whole row, and so
        is the first layer's part from the rows above (its mask-A rows r − 3..r − 1). Then, pixel by
        pixel, only what reads row r itself: the first layer's 3 pixels to the left, each layer's input
        at (r, c − 1) and (r, c), and its cell state of the row above at c (two row buffers per layer)."""
        param = self._param()
        n, size, reach, hidden = len(uniforms), IMAGE_SIZE, self.first.kernel_size[0] // 2, self.rows[0].hidden
        like = {"dtype": param.dtype, "device": param.device}
        # The pixels channels-first with a zero border (3 rows above, 3 columns each side), so the rows
        # above row r are one slice; each layer's states column-major (column, N, h), as state_weight.
        pixels = torch.zeros(n, 1, size + reach, size + 2 * reach, **like)
        w_above = (self.first.weight * self.first.mask)[:, :, :reach]
        w_left = self.first.weight[:, 0, reach, :reach].t()  # (3 taps c − 3..c − 1, 2h)
        above_h = [torch.zeros(size + 2, n, hidden, **like) for _ in self.rows]  # a zero column each side
        this_h = [torch.zeros(size + 2, n, hidden, **like) for _ in self.rows]
        above_c = [torch.zeros(size, n, hidden, **like) for _ in self.rows]
        this_c = [torch.zeros(size, n, hidden, **like) for _ in self.rows]
        w_in = [layer.input_weight().split(2 * hidden) for layer in self.rows]  # taps c − 1, c
        w_state = [layer.state_weight() for layer in self.rows]
        w_project = [(layer.project.weight.flatten(1).t(), layer.project.bias) for layer in self.rows]
        levels = torch.zeros(n, PIXELS, dtype=torch.long)
        for r in range(size):
            first_row = F.conv2d(pixels[:, :, r : r + reach], w_above, self.first.bias)[:, :, 0].permute(2, 0, 1).contiguous()
            state_gates = []
            for layer, a, (ws, bs) in zip(self.rows, above_h, w_state):
                windows = torch.cat([a[:size], a[1 : size + 1], a[2:]], dim=2).view(size * n, 3 * hidden)
                gates = torch.addmm(bs + layer.input_to_state.bias, windows, ws)
                state_gates.append(gates.view(size, n, 4 * hidden))
            lefts = [torch.zeros(n, 2 * hidden, **like) for _ in self.rows]
            for c in range(size):
                x = torch.addmm(first_row[c], pixels[:, 0, r + reach, c : c + reach], w_left)
                for i, layer in enumerate(self.rows):
                    (w_l, w_here), (w_p, b_p) = w_in[i], w_project[i]
                    gates = torch.addmm(state_gates[i][c], lefts[i], w_l).addmm_(x, w_here)
                    lefts[i] = x
                    h, cell = layer.cell(gates, above_c[i][c])
                    this_h[i][c + 1], this_c[i][c] = h, cell
                    x = x + torch.addmm(b_p, h, w_p)
                p = r * size + c
                levels[:, p] = draw_levels(self._head_at(x), uniforms[:, p], temperature)
                pixels[:, 0, r + reach, c + reach] = self._images(levels[:, p]).to(param.device, param.dtype)
            above_h, this_h, above_c, this_c = this_h, above_h, this_c, above_c  # row r becomes the row above
        return levels


USES = "masked/conv.py"  # the one module this family builds on besides the core and the base (params.yaml's `uses`)
MODELS: dict[str, type[GenerativeModel]] = {cls.kind: cls for cls in (PixelCNN, PixelRNN)}
