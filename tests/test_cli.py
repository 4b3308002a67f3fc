"""The `sarnet` command line on small models it trains nothing for (random weights suffice)."""

from pathlib import Path

import numpy as np
import pytest
import yaml
import torch
from PIL import Image

from sarnet.cli import main
from sarnet.core.model_files import save_model
from sarnet.families.conv_vae import ConvVAE
from sarnet.families.sarnet import SarNet
from sarnet.families.sarnet_vae import SarNetVAE

PARAMS = str(Path(__file__).resolve().parents[1] / "params.yaml")
HIDDEN = [[2, 14, 2], [2, 28, 4]]


@pytest.fixture
def vae_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "vae.safetensors"
    save_model(SarNetVAE(8, HIDDEN, 4), path)
    return path


def test_sample_writes_png_grid_and_npz(vae_file, tmp_path):
    main(["sample", "--model", str(vae_file), "-n", "12", "--nrow", "4", "--out", str(tmp_path / "s.png"),
          "--npz", str(tmp_path / "s.npz"), "--params", PARAMS])
    width, height = Image.open(tmp_path / "s.png").size
    assert (width, height) == (4 * 30 + 2, 3 * 30 + 2)  # 28-pixel tiles with 2-pixel padding
    images = np.load(tmp_path / "s.npz")["images"]
    assert images.shape == (12, 28, 28) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("model", [ConvVAE(4), SarNet(HIDDEN, 4, 0, 1.0), SarNet(HIDDEN, 4, 4, 1.0, ssim=False)],
                         ids=["conv_vae", "sarnet", "sarnet_classes"])
def test_sample_builds_any_model_kind_from_its_file(model, tmp_path):
    save_model(model, tmp_path / "m.safetensors")
    main(["sample", "--model", str(tmp_path / "m.safetensors"), "-n", "3", "--seed", "4", "--out", str(tmp_path / "m.png"),
          "--npz", str(tmp_path / "m.npz"), "--params", PARAMS])
    images = np.load(tmp_path / "m.npz")["images"]
    settings = yaml.safe_load(Path(PARAMS).read_text())["sampling"][model.kind]
    np.testing.assert_array_equal(images, model.eval().generate(3, 4, settings).numpy())  # the file's model, its settings


def test_sample_threshold_comes_from_params_unless_given(vae_file, tmp_path):
    params = yaml.safe_load(Path(PARAMS).read_text())
    params["sampling"]["sarnet_vae"]["threshold"] = 0.5
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    runs = {"params_0.5": ["--params", str(tmp_path / "p.yaml")],
            "flag_0.5": ["--params", PARAMS, "--threshold", "0.5"], "params_0.105": ["--params", PARAMS]}
    images = {}
    for name, extra in runs.items():
        main(["sample", "--model", str(vae_file), "-n", "4", "--out", str(tmp_path / f"{name}.png"),
              "--npz", str(tmp_path / f"{name}.npz"), *extra])
        images[name] = np.load(tmp_path / f"{name}.npz")["images"]
    np.testing.assert_array_equal(images["params_0.5"], images["flag_0.5"])
    assert not np.array_equal(images["params_0.5"], images["params_0.105"])
    assert ((images["params_0.5"] == 0) | (images["params_0.5"] >= 0.5)).all()


def test_inpaint_keeps_the_given_patches(vae_file, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([5, 3, 5, 5, 1, 5], dtype=np.uint8)
    with open(tmp_path / "d.npz", "wb") as fh:
        np.savez(fh, train_images=images, train_labels=labels, test_images=images, test_labels=labels)
    main(["inpaint", "--model", str(vae_file), "--data", str(tmp_path / "d.npz"), "--digit", "5", "--index", "0", "2",
          "--keep-patches", "21", "--n-styles", "3", "--out", str(tmp_path / "i.png"), "--npz", str(tmp_path / "i.npz")])
    rows = np.load(tmp_path / "i.npz")["images"]  # (2, 2 + styles, 28, 28): original, kept part, completions
    assert rows.shape == (2, 5, 28, 28)
    fives = images[labels == 5][[0, 2]] / 255.0
    np.testing.assert_array_equal(rows[:, 0], fives.astype(np.float32))
    for style in range(2, 5):  # 21 patches = the first three patch rows = pixel rows 0..11
        np.testing.assert_array_equal(rows[:, style, :12], rows[:, 0, :12])
    assert (rows[:, 1, 12:] == 0).all()


@pytest.mark.parametrize("argv, message", [
    (["sample", "--model", "no/such/model.safetensors"], "no such model file"),
    (["sample", "--model", "VAE", "-n", "0"], "-n must be >= 1"),
    (["sample", "--model", "VAE", "-n", "1000000000"], "-n must be <= 10000, got 1000000000"),  # issue 31: not 32 GB
    (["sample", "--model", "VAE", "--nrow", "0"], "--nrow must be >= 1"),
    (["sample", "--model", "VAE", "--threshold", "nan"], "--threshold must be in [0, 1]"),
    (["sample", "--model", "VAE", "--params", "no/such/params.yaml"], "params file not found"),
    (["sample", "--model", "CLASSIFIER"], "needs a sarnet or sarnet_vae or conv_vae or beta_vae or gan_mlp or dcgan "
                                          "or pixelcnn or pixelrnn_row or vqvae model, this is a classifier"),
    (["sample", "--model", "PICKLE"], "not a sarnet model file"),
    (["inpaint", "--model", "VAE", "--keep-patches", "0"], "--keep-patches must be in 1..49"),
    (["sample", "--model", "VAE", "--out", "DIR"], "a directory; give a file name"),
    (["sample", "--model", "VAE", "--out", "DIR/s.png", "--npz", "FILE/s.npz"], "cannot write into"),
    (["inpaint", "--model", "VAE", "--data", "/etc/passwd"], "not a prepared dataset"),  # probes of issue 14
    (["inpaint", "--model", "VAE", "--data", "PICKLE"], "not a prepared dataset"),
    (["explain", "--model", "VAE", "--data", "DIR"], "prepared data missing"),
    (["sample", "--model", "VAE", "--params", "STRING_THRESHOLD"], "`sampling.sarnet_vae.threshold` must be a number, got 'high'"),
    (["inpaint", "--model", "VAE", "--params", "STRING_THRESHOLD"], "`sampling.inpaint.z_scale` must be a number, got 'wide'"),
])
def test_bad_input_gives_one_line_error(argv, message, vae_file, tmp_path, capsys):
    from sarnet.instruments.classifier import MnistClassifier

    save_model(MnistClassifier([4, 8], 16, 0.1), tmp_path / "classifier.safetensors")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "old.pt")
    (tmp_path / "a-file").write_text("")
    bad_params = yaml.safe_load(Path(PARAMS).read_text())
    bad_params["sampling"]["sarnet_vae"]["threshold"] = "high"
    bad_params["sampling"]["inpaint"]["z_scale"] = "wide"
    (tmp_path / "bad_params.yaml").write_text(yaml.safe_dump(bad_params))
    names = {"VAE": str(vae_file), "CLASSIFIER": str(tmp_path / "classifier.safetensors"), "PICKLE": str(tmp_path / "old.pt"),
             "DIR": str(tmp_path), "DIR/s.png": str(tmp_path / "s.png"), "FILE/s.npz": str(tmp_path / "a-file" / "s.npz"),
             "STRING_THRESHOLD": str(tmp_path / "bad_params.yaml")}
    argv = [names.get(a, a) for a in argv] + (["--params", PARAMS] if "--params" not in argv else [])
    argv += [] if "--out" in argv else ["--out", str(tmp_path / "s.png")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "s.png").exists() and [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize("device, message", [
    ("bogus", "$SARNET_DEVICE='bogus' is not a device"),
    ("mps", "$SARNET_DEVICE='mps': only cpu and cuda are supported"),
    ("cuda", "$SARNET_DEVICE='cuda', but this machine has no CUDA device"),
    ("cuda:7", "$SARNET_DEVICE='cuda:7', but this machine has no CUDA device"),
])
def test_sample_refuses_a_device_it_cannot_use(device, message, vae_file, tmp_path, monkeypatch, capsys):
    """Issue 31: these ran on the CPU and said `wrote …`."""
    monkeypatch.setenv("SARNET_DEVICE", device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    with pytest.raises(SystemExit) as info:
        main(["sample", "--model", str(vae_file), "-n", "2", "--out", str(tmp_path / "s.png"), "--params", PARAMS])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_sample_runs_on_the_device_sarnet_device_names(device, vae_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SARNET_DEVICE", device)
    used, generate = [], SarNetVAE.generate
    monkeypatch.setattr(SarNetVAE, "generate", lambda self, *a: used.append(next(self.parameters()).device.type) or generate(self, *a))
    main(["sample", "--model", str(vae_file), "-n", "3", "--out", str(tmp_path / "s.png"), "--npz", str(tmp_path / "s.npz"),
          "--params", PARAMS])
    assert used == [device] and np.load(tmp_path / "s.npz")["images"].shape == (3, 28, 28)


@pytest.fixture
def data_file(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([5, 4, 5, 3, 4, 5], dtype=np.uint8)
    path = tmp_path / "d.npz"
    with open(path, "wb") as fh:
        np.savez(fh, train_images=images, train_labels=labels, test_images=images, test_labels=labels)
    return path, images, labels


@pytest.mark.parametrize("model", [SarNetVAE(4, HIDDEN, 4), SarNet(HIDDEN, 4, 0, 1.0)], ids=["sarnet_vae", "sarnet"])
def test_explain_writes_one_overlay_per_target(model, data_file, tmp_path):
    path, images, labels = data_file
    save_model(model, tmp_path / "m.safetensors")
    main(["explain", "--model", str(tmp_path / "m.safetensors"), "--data", str(path), "--digit", "5", "--index", "1",
          "--targets", "20", "27", "33", "--out", str(tmp_path / "e.png"), "--npz", str(tmp_path / "e.npz"),
          "--params", PARAMS])
    width, height = Image.open(tmp_path / "e.png").size
    assert (width, height) == (3 * (4 * 28 + 2) + 2, 4 * 28 + 2 + 2)  # ×4 tiles in one row, 2-pixel padding
    saved = np.load(tmp_path / "e.npz")
    assert saved["importance"].shape == (3, 49) and saved["targets"].tolist() == [20, 27, 33]
    np.testing.assert_array_equal(saved["image"], (images[labels == 5][1] / 255.0).astype(np.float32))
    for row, target in zip(saved["importance"], (20, 27, 33)):
        assert (row[target:] == 0).all() and (row[:target] > 0).any()


def test_interpolate_writes_the_path_between_two_labels(vae_file, data_file, tmp_path):
    path, images, _ = data_file
    main(["interpolate", "--model", str(vae_file), "--data", str(path), "--pair", "4", "3", "--steps", "6",
          "--out", str(tmp_path / "p.png"), "--npz", str(tmp_path / "p.npz"), "--params", PARAMS])
    width, height = Image.open(tmp_path / "p.png").size
    assert (width, height) == (8 * 30 + 2, 30 + 2)  # original A, 6 steps, original B
    saved = np.load(tmp_path / "p.npz")
    assert saved["images"].shape == (6, 28, 28) and saved["test_index"].tolist() == [1, 3]  # first 4, first 3
    np.testing.assert_array_equal(saved["originals"], (images[[1, 3]] / 255.0).astype(np.float32))


@pytest.mark.parametrize("argv, message", [
    (["explain", "--model", "VAE", "--data", "DATA", "--targets", "20", "49"], "target patch 49 is outside the 7×7 grid (0..48)"),
    (["explain", "--model", "CONV", "--data", "DATA"], "needs a sarnet_vae or sarnet model, this is a conv_vae"),
    (["explain", "--model", "VAE", "--data", "DATA", "--figure-set", "nope"], "no `figures.nope` section"),
    (["explain", "--model", "VAE", "--data", "no/such/data.npz"], "prepared data missing"),
    (["explain", "--model", "VAE", "--data", "DATA", "--index", "3"], "--index must be in 0..2"),
    (["interpolate", "--model", "CONV", "--data", "DATA"], "needs a sarnet_vae model, this is a conv_vae"),
    (["interpolate", "--model", "VAE", "--data", "DATA", "--steps", "1"], "--steps must be >= 2"),
    (["interpolate", "--model", "VAE", "--data", "DATA", "--pair", "4", "7"], "no test image with label 7"),
    (["interpolate", "--model", "VAE", "--data", "DATA", "--digit", "5", "--pair", "4", "5"], "leave --digit at -1"),
    (["interpolate", "--model", "VAE", "--data", "no/such/data.npz"], "prepared data missing"),
])
def test_explain_and_interpolate_bad_input_gives_one_line_error(argv, message, vae_file, data_file, tmp_path, capsys):
    save_model(ConvVAE(4), tmp_path / "conv.safetensors")
    names = {"VAE": str(vae_file), "CONV": str(tmp_path / "conv.safetensors"), "DATA": str(data_file[0])}
    argv = [names.get(a, a) for a in argv] + ["--out", str(tmp_path / "x.png"), "--params", PARAMS]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_explain_defaults_come_from_the_figure_set_in_params(vae_file, data_file, tmp_path):
    path, _, _ = data_file
    main(["explain", "--model", str(vae_file), "--data", str(path), "--digit", "5", "--out", str(tmp_path / "e.png"),
          "--npz", str(tmp_path / "e.npz"), "--params", PARAMS])
    figure = yaml.safe_load(Path(PARAMS).read_text())["figures"]["mnist_5"]
    assert np.load(tmp_path / "e.npz")["targets"].tolist() == figure["targets"]


# ---------------------------------------------------------------- sarnet score

def blob_images(n: int, seed: int, size: int = 6) -> np.ndarray:
    """(n, 28, 28) uint8: one bright rectangle per image at a random place."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for image, (r, c) in zip(images, rng.integers(3, 28 - size - 3, (n, 2))):
        image[r : r + size, c : c + size // 2 + 2] = rng.integers(120, 256)
    return images


def textbook_fid_of_instrument(path: str, a: np.ndarray, b: np.ndarray) -> float:
    """The instrument's logits of [0, 1] images mapped to [−1, 1], and the textbook FID (scipy's sqrtm)."""
    import scipy.linalg
    from sarnet.instruments.loader import load_instrument

    net = load_instrument(path)
    with torch.no_grad():
        fa, fb = (net(torch.from_numpy(x).float().div(255).unsqueeze(1) * 2 - 1).double().numpy() for x in (a, b))
    mu1, mu2, s1, s2 = fa.mean(0), fb.mean(0), np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2))))


def test_score_is_the_textbook_fid_of_both_frozen_instruments(tmp_path, capsys):
    import json

    a, b = blob_images(300, seed=1), blob_images(400, seed=2, size=8)
    np.savez_compressed(tmp_path / "a.npz", images=a)
    np.savez_compressed(tmp_path / "b.npz", images=b.reshape(400, 784).astype(np.float32) / 255)  # floats, flat
    main(["score", "--images", str(tmp_path / "a.npz"), "--reference", str(tmp_path / "b.npz"),
          "--json", str(tmp_path / "fid.json")])
    fids = json.loads((tmp_path / "fid.json").read_text())["fid"]
    assert fids["cnn"] == pytest.approx(textbook_fid_of_instrument("models/classifier/mnist.safetensors", a, b), rel=1e-4)
    assert fids["mlp"] == pytest.approx(textbook_fid_of_instrument("models/classifier/mnist_mlp.safetensors", a, b), rel=1e-4)
    assert fids["cnn"] > 1 and fids["mlp"] > 1  # two different sets
    assert f"cnn {fids['cnn']:.3f}, mlp {fids['mlp']:.3f}" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    ("missing", "no such file"),
    ("text", "not an .npz file"),
    ("objects", "not a readable .npz of arrays"),
    ("no_images", "no `images` array (has: pixels)"),
    ("few", "5 images; an FID needs 20 to 100,000"),
    ("shape", "`images` must be (N, 28, 28) or (N, 784), got (30, 27, 28)"),
    ("range", "float images must be finite and in [0, 1]"),
    ("ints", "`images` must be uint8 bytes or floats in [0, 1], got int64"),
    ("forged", "`images` has shape (1000000000, 28, 28); at most 100,000 images"),
])
def test_score_bad_input_gives_one_line_error(content, message, tmp_path, capsys):
    import io
    import zipfile

    path = tmp_path / "x.npz"
    if content == "text":
        path.write_text("images")
    elif content == "objects":
        np.savez(path, images=np.array([{"a": 1}] * 30, dtype=object))
    elif content == "no_images":
        np.savez(path, pixels=np.zeros((30, 28, 28), np.uint8))
    elif content == "few":
        np.savez(path, images=np.zeros((5, 28, 28), np.uint8))
    elif content == "shape":
        np.savez(path, images=np.zeros((30, 27, 28), np.uint8))
    elif content == "range":
        np.savez(path, images=np.full((30, 28, 28), 2.0))
    elif content == "ints":
        np.savez(path, images=np.zeros((30, 28, 28), np.int64))
    elif content == "forged":  # a header claiming 10⁹ images, and no data
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("images.npy", header.getvalue())
    np.savez(tmp_path / "ok.npz", images=blob_images(30, seed=0))
    with pytest.raises(SystemExit) as info:
        main(["score", "--images", str(path), "--reference", str(tmp_path / "ok.npz")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err and "Traceback" not in err


def test_ui_serves_the_store_and_names_the_runs_and_models_tables_in_the_model_training_view(
        isolated_store, monkeypatch, capsys):
    import os

    from mlflow.tracking import MlflowClient

    served = []
    monkeypatch.setattr(os, "execv", lambda program, argv: served.append(argv))
    main(["ui", "--port", "5077"])
    (argv,) = served
    store = f"sqlite:///{isolated_store / 'mlflow.db'}"
    assert argv[1:] == ["server", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", "5077"]
    experiment = MlflowClient(tracking_uri=store).get_experiment_by_name("sarnet")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    base = f"http://127.0.0.1:5077/#/experiments/{experiment.experiment_id}"
    out = capsys.readouterr().out
    # MLflow's UI reads its GenAI / model-training switch from this query (its WorkflowTypeContext)
    assert f"{base}/runs?workflowType=machine_learning" in out
    assert f"{base}/models?workflowType=machine_learning" in out
