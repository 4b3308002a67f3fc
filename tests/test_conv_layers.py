"""The VAEs' whole-map convolutions computed as matmuls agree with torch's own convolutions."""

import pytest
import torch
from torch import nn

from sarnet.families.base import PointMapConvTranspose2d, WholeMapConv2d
from sarnet.families.conv_vae import ConvVAE
from sarnet.families.sarnet_vae import SarNetVAE


def _outputs_and_grads(layer: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = layer(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # a non-uniform upstream gradient
    return [out.detach(), x.grad, layer.weight.grad, layer.bias.grad]


@pytest.mark.parametrize("make_fast, make_reference, shape", [
    (lambda: WholeMapConv2d(5, 6, 7), lambda: nn.Conv2d(5, 6, 7), (3, 5, 7, 7)),  # the matmul path
    (lambda: WholeMapConv2d(5, 6, 3), lambda: nn.Conv2d(5, 6, 3), (3, 5, 7, 7)),  # a larger map: plain conv
    (lambda: PointMapConvTranspose2d(5, 6, 7), lambda: nn.ConvTranspose2d(5, 6, 7), (3, 5, 1, 1)),
    (lambda: PointMapConvTranspose2d(5, 6, 3), lambda: nn.ConvTranspose2d(5, 6, 3), (3, 5, 4, 4)),
])
def test_output_and_every_gradient_match_torchs_convolution(make_fast, make_reference, shape):
    torch.manual_seed(0)
    reference = make_reference()
    fast = make_fast()
    fast.load_state_dict(reference.state_dict())  # same parameter names and shapes
    x = torch.randn(shape, dtype=torch.float64)
    reference, fast = reference.double(), fast.double()
    for got, want in zip(_outputs_and_grads(fast, x), _outputs_and_grads(reference, x)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model_class", [ConvVAE, SarNetVAE])
def test_model_files_keep_their_parameter_names_and_shapes(model_class):
    """Models saved before the matmul layers load unchanged: nn.Conv2d's names and shapes."""
    args = {"latent_dim": 8} if model_class is ConvVAE else {"latent_dim": 8, "hidden": [[2, 28, 4]], "patch": 4}
    model = model_class(**args)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes["encoder.features.4.weight"] == (128, 64, 7, 7)
    assert isinstance(model.encoder.features[4], nn.Conv2d)
    if model_class is ConvVAE:
        assert shapes["deconv.0.weight"] == (128, 64, 7, 7) and shapes["deconv.0.bias"] == (64,)
        assert isinstance(model.deconv[0], nn.ConvTranspose2d)
