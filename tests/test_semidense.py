"""SemiDense layer: the autoregressive mask checked through autograd, geometry, buffers, init, errors.

The expected connectivity is rebuilt here from docs/protocol.md "Models" with plain Python loops
(never with sarnet.masked.semidense's own helpers).
"""

import math

import pytest
import torch

from sarnet.core.errors import ConfigError
from sarnet.masked.semidense import SemiDense
from reference import unit_patches


# ---------------------------------------------------------------- independent references


def may_see(o, k, first):
    """Type (a): o = 0 sees input patch 0, o > 0 sees 0..o−1. Type (b): o sees 0..o."""
    if first:
        return k == 0 if o == 0 else k <= o - 1
    return k <= o


def expected_connectivity(out_patches, in_patches, n_patches, first):
    """Boolean (out_units, in_units) matrix, built from a patch-level table filled by loops."""
    table = torch.zeros(n_patches, n_patches, dtype=torch.bool)
    for o in range(n_patches):
        for k in range(n_patches):
            table[o, k] = may_see(o, k, first)
    return table[torch.tensor(out_patches)][:, torch.tensor(in_patches)]


def randomise_away_from_zero(layer, seed=0):
    """Random weights of magnitude in [0.5, 1] and random sign, so every unmasked weight is non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            mag = 0.5 + 0.5 * torch.rand(p.shape, generator=g)
            sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0)
            p.copy_(mag * sign)


# ---------------------------------------------------------------- autoregressive property

# (in_channels, out_channels, size, patch): patch 1 on an 8×8 image (64 patches), else 28×28
GEOMETRIES = [(2, 1, 8, 1), (2, 1, 28, 2), (2, 2, 28, 4), (1, 2, 28, 7)]


@pytest.mark.parametrize("latent_dim", [0, 3])
@pytest.mark.parametrize("first", [True, False], ids=["type_a", "type_b"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}to{g[1]}ch_{g[2]}px_patch{g[3]}")
def test_autoregressive_through_gradients(geometry, first, latent_dim):
    cin, cout, size, patch = geometry
    torch.manual_seed(0)
    layer = SemiDense(cin, cout, size, size, patch, patch, latent_dim=latent_dim, first=first)
    randomise_away_from_zero(layer)
    n_patches = (size // patch) ** 2
    n_in, n_out = cin * size * size, cout * size * size

    x = torch.rand(1, n_in)
    z = torch.randn(1, latent_dim) if latent_dim else None

    if latent_dim:
        jx, jz = torch.autograd.functional.jacobian(lambda a, b: layer(a, b)[0], (x, z), vectorize=True)
        jx, jz = jx[:, 0, :], jz[:, 0, :]
    else:
        jx = torch.autograd.functional.jacobian(lambda a: layer(a)[0], x, vectorize=True)[:, 0, :]
    assert jx.shape == (n_out, n_in)

    allowed = expected_connectivity(unit_patches(cout, size, patch), unit_patches(cin, size, patch), n_patches, first)
    # every unit of a patch that must not be seen: exactly zero gradient
    assert (jx[~allowed] == 0.0).all(), "an output unit depends on an input patch it must not see"
    # every unit of a patch that may be seen: non-zero gradient (weights were drawn away from zero)
    assert (jx[allowed] != 0.0).all(), "an output unit ignores an input unit it is allowed to see"

    # and per output patch: some gradient towards every patch it may see (over-strict masks fail)
    out_p = torch.tensor(unit_patches(cout, size, patch))
    in_p = torch.tensor(unit_patches(cin, size, patch))
    block = torch.zeros(n_patches, n_patches)
    block.index_put_((out_p[:, None].expand_as(jx), in_p[None, :].expand_as(jx)), jx.abs(), accumulate=True)
    for o in range(n_patches):
        for k in range(n_patches):
            assert (block[o, k] > 0) == may_see(o, k, first), (o, k)

    if latent_dim:
        assert jz.shape == (n_out, latent_dim)
        assert (jz != 0.0).all(), "every output unit must see all of z"


def test_autoregressive_with_default_init_weights():
    """The same zero pattern with the layer's own initial weights (no re-randomisation)."""
    torch.manual_seed(1)
    layer = SemiDense(2, 2, 28, 14, 4, 2, first=True)
    x = torch.rand(1, 2 * 784)
    j = torch.autograd.functional.jacobian(lambda a: layer(a)[0], x, vectorize=True)[:, 0, :]
    allowed = expected_connectivity(unit_patches(2, 14, 2), unit_patches(2, 28, 4), 49, True)
    assert (j[~allowed] == 0.0).all()
    assert (j[allowed] != 0.0).float().mean() > 0.99


def test_masking_survives_training_step():
    """Gradients of masked weights are zero, so an optimiser step cannot open a forbidden connection."""
    torch.manual_seed(2)
    layer = SemiDense(1, 1, 8, 8, 2, 2, first=True)
    opt = torch.optim.SGD(layer.parameters(), lr=10.0)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.rand(4, 64)).pow(2).sum().backward()
        opt.step()
    j = torch.autograd.functional.jacobian(lambda a: layer(a)[0], torch.rand(1, 64))[:, 0, :]
    allowed = expected_connectivity(unit_patches(1, 8, 2), unit_patches(1, 8, 2), 16, True)
    assert (j[~allowed] == 0.0).all()


# ---------------------------------------------------------------- geometry

def test_different_geometry_same_grid_works_and_is_autoregressive():
    torch.manual_seed(3)
    layer = SemiDense(1, 2, 28, 14, 4, 2, first=False)  # 28² in 4² patches -> 2ch 14² in 2² patches
    randomise_away_from_zero(layer)
    x = torch.rand(5, 784)
    out = layer(x)
    assert out.shape == (5, 2 * 14 * 14)
    j = torch.autograd.functional.jacobian(lambda a: layer(a)[0], x[:1], vectorize=True)[:, 0, :]
    allowed = expected_connectivity(unit_patches(2, 14, 2), unit_patches(1, 28, 4), 49, False)
    assert (j[~allowed] == 0.0).all()
    assert (j[allowed] != 0.0).all()


@pytest.mark.parametrize("args", [
    (1, 1, 28, 14, 4, 7),   # 7×7 grid vs 2×2 grid
    (1, 1, 28, 28, 4, 2),   # 7×7 grid vs 14×14 grid
    (1, 1, 28, 28, 5, 5),   # patch does not divide the size
    (1, 1, 28, 14, 4, 3),   # out patch does not divide the out size
    (1, 1, 28, 28, 7, 4),   # 4×4 vs 7×7
])
def test_incompatible_geometry_raises(args):
    with pytest.raises(ConfigError):
        SemiDense(*args)


@pytest.mark.parametrize("kwargs", [dict(in_channels=0), dict(out_channels=0), dict(in_patch=0), dict(latent_dim=-1)])
def test_nonpositive_sizes_raise(kwargs):
    base = dict(in_channels=1, out_channels=1, in_size=8, out_size=8, in_patch=2, out_patch=2, latent_dim=0)
    base.update(kwargs)
    with pytest.raises(ConfigError):
        SemiDense(**base)


# ---------------------------------------------------------------- buffers

def test_mask_is_a_buffer_in_state_dict_and_not_a_parameter():
    layer = SemiDense(1, 1, 8, 8, 2, 2, latent_dim=2)
    assert "mask" in layer.state_dict()
    assert "mask" in dict(layer.named_buffers())
    assert all(name != "mask" for name, _ in layer.named_parameters())
    assert layer.state_dict()["mask"].shape == layer.weight.shape


@pytest.mark.parametrize("convert", [lambda m: m.to(torch.float64), lambda m: m.double()], ids=["to", "double"])
def test_mask_moves_with_dtype(convert):
    torch.manual_seed(4)
    layer = SemiDense(1, 1, 8, 8, 2, 2, latent_dim=2, first=True)
    x, z = torch.rand(3, 64), torch.randn(3, 2)
    ref = layer(x, z).double()
    convert(layer)
    assert layer.mask.dtype == torch.float64
    assert layer.weight.dtype == torch.float64
    out = layer(x.double(), z.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(5)
    layer = SemiDense(2, 1, 28, 14, 4, 2, latent_dim=3, first=True)
    path = tmp_path / "layer.pt"
    torch.save(layer.state_dict(), path)
    torch.manual_seed(99)
    fresh = SemiDense(2, 1, 28, 14, 4, 2, latent_dim=3, first=True)
    x, z = torch.rand(4, 2 * 784), torch.randn(4, 3)
    assert not torch.equal(fresh(x, z), layer(x, z))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh(x, z), layer(x, z))
    assert torch.equal(fresh.mask, layer.mask)


# ---------------------------------------------------------------- init

@pytest.mark.parametrize("in_channels,size,patch,latent_dim", [(1, 4, 2, 20), (2, 28, 4, 0), (1, 28, 4, 128)])
def test_init_uniform_within_full_fan_in_bound(in_channels, size, patch, latent_dim):
    torch.manual_seed(6)
    out_channels = 2
    layer = SemiDense(in_channels, out_channels, size, size, patch, patch, latent_dim=latent_dim)
    n_in = in_channels * size * size
    bound = 1.0 / math.sqrt(n_in + latent_dim)
    assert layer.weight.shape == (out_channels * size * size, n_in + latent_dim)
    for p in (layer.weight, layer.bias):
        m = p.detach().abs().max().item()
        assert m <= bound * (1 + 1e-6)
        assert m > 0.9 * bound
    # uniform: standard deviation bound/√3 (weights are plentiful enough for 10%)
    assert layer.weight.detach().std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert abs(layer.weight.detach().mean().item()) < 0.05 * bound


# ---------------------------------------------------------------- errors

def test_wrong_input_shape_raises():
    layer = SemiDense(1, 1, 8, 8, 2, 2)
    with pytest.raises(ConfigError):
        layer(torch.rand(2, 63))
    with pytest.raises(ConfigError):
        layer(torch.rand(2, 1, 8, 8))
    with pytest.raises(ConfigError):
        layer(torch.rand(64))


def test_missing_or_wrong_z_raises():
    layer = SemiDense(1, 1, 8, 8, 2, 2, latent_dim=3)
    x = torch.rand(2, 64)
    with pytest.raises(ConfigError):
        layer(x)
    with pytest.raises(ConfigError):
        layer(x, torch.randn(2, 4))
    with pytest.raises(ConfigError):
        layer(x, torch.randn(3, 3))
    assert layer(x, torch.randn(2, 3)).shape == (2, 64)


def test_unexpected_z_raises():
    layer = SemiDense(1, 1, 8, 8, 2, 2)
    with pytest.raises(ConfigError):
        layer(torch.rand(2, 64), torch.randn(2, 3))


# ---------------------------------------------------------------- the block-triangular layer is the masked dense one

def masked_dense_reference(cin, cout, size_in, size_out, patch_in, patch_out, latent_dim, first, weight, bias):
    """The layer as docs/protocol.md "Models" states it, with a dense product: NCHW weight · mask (from the
    loops above; latent columns all ones) + bias."""
    n_patches = (size_in // patch_in) ** 2
    allowed = expected_connectivity(unit_patches(cout, size_out, patch_out), unit_patches(cin, size_in, patch_in),
                                    n_patches, first)
    mask = torch.cat([allowed, torch.ones(len(allowed), latent_dim, dtype=torch.bool)], dim=1).to(weight.dtype)
    return lambda x, z: torch.nn.functional.linear(x if z is None else torch.cat([x, z], 1), weight * mask, bias)


@pytest.mark.parametrize("latent_dim", [0, 5])
@pytest.mark.parametrize("first", [True, False], ids=["type_a", "type_b"])
@pytest.mark.parametrize("geometry", [(1, 2, 28, 14, 4, 2), (2, 1, 8, 8, 1, 1), (1, 1, 28, 28, 7, 7), (3, 2, 12, 12, 2, 2)],
                         ids=lambda g: f"{g[0]}x{g[2]}p{g[4]}_to_{g[1]}x{g[3]}p{g[5]}")
def test_outputs_and_gradients_equal_the_masked_dense_layers(geometry, first, latent_dim):
    cin, cout, size_in, size_out, patch_in, patch_out = geometry
    g = torch.Generator().manual_seed(11)
    n_in, n_out = cin * size_in**2, cout * size_out**2
    weight = torch.randn(n_out, n_in + latent_dim, generator=g, dtype=torch.float64)  # every entry non-zero
    bias = torch.randn(n_out, generator=g, dtype=torch.float64)
    layer = SemiDense(cin, cout, size_in, size_out, patch_in, patch_out, latent_dim=latent_dim, first=first).double()
    layer.load_state_dict({"weight": weight, "bias": bias, "mask": layer.mask})  # a model file's NCHW tensors
    reference = masked_dense_reference(cin, cout, size_in, size_out, patch_in, patch_out, latent_dim, first,
                                       weight.clone().requires_grad_(), bias.clone().requires_grad_())
    x = torch.rand(6, n_in, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, latent_dim, generator=g, dtype=torch.float64, requires_grad=True) if latent_dim else None
    upstream = torch.randn(6, n_out, generator=g, dtype=torch.float64)
    expected, got = reference(x, z), layer(x, z)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    inputs = [x] + ([z] if latent_dim else [])
    grads_expected = torch.autograd.grad(expected, inputs, upstream)
    grads_got = torch.autograd.grad(got, inputs, upstream)
    for a, b in zip(grads_got, grads_expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the weight's and bias's gradients, read back in the NCHW layout of the file (the dense layer's own)
    ref_w = weight.clone().requires_grad_()
    ref_b = bias.clone().requires_grad_()
    dense = masked_dense_reference(cin, cout, size_in, size_out, patch_in, patch_out, latent_dim, first, ref_w, ref_b)
    (dense(x.detach(), None if z is None else z.detach()) * upstream).sum().backward()
    (layer(x.detach(), None if z is None else z.detach()) * upstream).sum().backward()
    rows = torch.argsort(torch.tensor(unit_patches(cout, size_out, patch_out)), stable=True)
    cols = torch.cat([torch.argsort(torch.tensor(unit_patches(cin, size_in, patch_in)), stable=True),
                      torch.arange(n_in, n_in + latent_dim)])
    torch.testing.assert_close(layer.weight.grad, ref_w.grad[rows][:, cols], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, ref_b.grad[rows], rtol=1e-10, atol=1e-12)


def test_a_file_written_before_the_patch_major_layout_loads_and_gives_the_same_function(tmp_path):
    """A model file holds the NCHW weight (masked entries whatever training left there), bias and mask."""
    g = torch.Generator().manual_seed(12)
    weight = torch.randn(2 * 14 * 14, 784 + 3, generator=g, dtype=torch.float64)
    bias = torch.randn(2 * 14 * 14, generator=g, dtype=torch.float64)
    layer = SemiDense(1, 2, 28, 14, 4, 2, latent_dim=3, first=True).double()
    torch.save({"weight": weight, "bias": bias, "mask": layer.mask}, tmp_path / "old.pt")
    layer.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
    x = torch.rand(4, 784, generator=g, dtype=torch.float64)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    expected = masked_dense_reference(1, 2, 28, 14, 4, 2, 3, True, weight, bias)(x, z)
    torch.testing.assert_close(layer(x, z), expected, rtol=1e-10, atol=1e-10)
    saved = layer.state_dict()  # and it writes the same NCHW tensors back
    assert torch.equal(saved["weight"], weight) and torch.equal(saved["bias"], bias)
    assert torch.equal(saved["mask"], layer.mask)


def test_a_stack_kept_patch_major_inside_equals_its_layers_one_by_one():
    from sarnet.masked.semidense import LayerShape, SemiDenseStack

    torch.manual_seed(13)
    stack = SemiDenseStack([LayerShape(1, 28, 4), LayerShape(2, 14, 2), LayerShape(3, 28, 4), LayerShape(1, 28, 4)],
                           ["relu", "relu", "sigmoid"], latent_dim=4).double()
    x, z = torch.rand(5, 784, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    h = x
    for layer, activation in zip(stack.layers, (torch.relu, torch.relu, torch.sigmoid)):
        h = activation(layer(h, z))  # each layer on its own, NCHW in and out
    torch.testing.assert_close(stack(x, z), h, rtol=1e-12, atol=1e-12)
