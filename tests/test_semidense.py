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
