"""Every path from a model to numpy goes through the host, as CUDA requires (issue 14, cause 10:
`figures` crashed on an H100 passing a CUDA tensor to numpy).

Without a GPU, `EmulatedAccelerator` stands in for one: tensors computed from the model's
parameters and buffers count as device-resident, as they would on CUDA; they reach the host only
through `.cpu()` (or Python values: `.item()`, `.tolist()`), and `numpy()` / `np.asarray` on a
resident tensor raises CUDA's error. A GPU machine runs the same code paths for real (README).
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from sarnet.core.files import save_grid, save_rgb_grid
from sarnet.core.model_files import save_model
from sarnet.explain import importance_figure, inpainting_rows, interpolation_row, pixel_patch_map
from sarnet.families.conv_vae import ConvVAE
from sarnet.families.sarnet import SarNet
from sarnet.families.sarnet_vae import SarNetVAE

HIDDEN = [[2, 14, 2], [2, 28, 4]]


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class EmulatedAccelerator(TorchFunctionMode):
    """Track which tensors would live on the accelerator if `model` were on one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self._resident: dict[int, weakref.ref] = {}  # by id: tensors compare elementwise, not by identity
        for tensor in (*model.parameters(), *model.buffers()):
            self._mark(tensor)
        self.host_copies = 0

    def _mark(self, tensor: torch.Tensor) -> None:
        self._resident[id(tensor)] = weakref.ref(tensor)

    def _is_resident(self, tensor: torch.Tensor) -> bool:
        ref = self._resident.get(id(tensor))
        return ref is not None and ref() is tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        resident = any(self._is_resident(t) for t in inputs)
        if name in ("numpy", "__array__") and resident:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        out = func(*args, **kwargs)
        if name == "cpu":
            self.host_copies += resident
            # On CPU, .cpu() returns its input itself; the host copy must be a tensor of its own
            return out.view_as(out) if resident and out is args[0] else out
        if resident:
            for tensor in _tensors(out):
                self._mark(tensor)
            if name.endswith("_") or name == "__setitem__":  # in place: the target now holds device data
                self._mark(args[0])
        return out


def test_the_emulation_catches_a_device_tensor_passed_to_numpy():
    model = SarNetVAE(8, HIDDEN, 4)
    with EmulatedAccelerator(model) as device:
        out = model.decoder(torch.zeros(2, 784), torch.zeros(2, 8))
        with pytest.raises(TypeError, match="Use Tensor.cpu"):
            out.numpy()
        with pytest.raises(TypeError, match="Use Tensor.cpu"):
            np.asarray(out.detach())
        assert out.detach().cpu().numpy().shape == (2, 784)
        assert torch.zeros(3).numpy().shape == (3,)  # host tensors are untouched
    assert device.host_copies == 1


def test_figures_stage_code_path_reaches_numpy_only_through_the_host(tmp_path):
    """What `figures@<set>` runs: inpainting, patch importance, interpolation, the PNG writers."""
    torch.manual_seed(0)
    model = SarNetVAE(8, HIDDEN, 4).eval()
    images = torch.rand(2, 28, 28)
    with EmulatedAccelerator(model) as device:
        rows = inpainting_rows(model, images, torch.Generator().manual_seed(0), keep_patches=24, n_styles=2,
                               z_scale=0.6667, threshold=0.15)
        save_grid(rows.flatten(0, 1), tmp_path / "inpainting.png", nrow=rows.shape[1])
        _, overlays = importance_figure(model, images[0], [10, 17], k=5)
        save_rgb_grid(overlays, tmp_path / "importance.png", nrow=2)
        assert pixel_patch_map(model).shape == (28, 28)
        row = interpolation_row(model, images[0], images[1], 3, threshold=0.15)
        save_grid(row, tmp_path / "interpolation.png", nrow=5)
    assert device.host_copies > 0  # the results did come from the (emulated) device
    assert all((tmp_path / f"{n}.png").read_bytes().startswith(b"\x89PNG") for n in ("inpainting", "importance", "interpolation"))


@pytest.mark.parametrize("model", [SarNetVAE(8, HIDDEN, 4), ConvVAE(8), SarNet(HIDDEN, 4, 0, 1.0), SarNet(HIDDEN, 4, 4, 1.0, ssim=False)],
                         ids=["sarnet_vae", "conv_vae", "sarnet", "sarnet_classes"])
def test_generate_and_save_return_host_data(model, tmp_path):
    """`generate` (what evaluate and the training stages' sample grids call) and `save_model`."""
    settings = {"sarnet_vae": {"threshold": 0.105}, "conv_vae": {"batch_size": 8},
                "sarnet": {"alpha_max": 0.65, "p_earlier": 0.3, "threshold": 0.15, "refine": True, "temperature": 0.3}}
    with EmulatedAccelerator(model):
        images = model.generate(4, 0, settings[model.kind])
        assert images.numpy().shape == (4, 28, 28)
        save_model(model, tmp_path / "m.safetensors")
