"""The project's foundation: dvc.yaml declares exactly what each stage imports and reads, params
are strict, model files describe themselves and are byte-deterministic, the library's layers show
in its imports, and the facts the code cites live in the repository."""

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from stage_imports import ROOT, project_imports
from sarnet.core.errors import ConfigError, DataError
from sarnet.core.model_files import save_model
from sarnet.core.params import check_keys
from sarnet.core.training import TrainConfig
from sarnet.families import FAMILY_OF_KIND, load_model
from sarnet.families.conv_vae import ConvVAE
from sarnet.families.sarnet import SarNet
from sarnet.families.sarnet_vae import SarNetVAE
from sarnet.families.xgboost import GenXGBConfig
from sarnet.instruments.classifier import MnistClassifier
from sarnet.instruments.loader import load_instrument

HIDDEN = [[2, 14, 2], [2, 28, 4]]


@pytest.fixture(scope="module")
def stages():
    """dvc.yaml's stages as DVC resolves them: name -> (command, input paths, param keys)."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            paths = {d.def_path for d in stage.deps if type(d).__name__ != "ParamsDependency"}
            keys = {k for d in stage.deps if type(d).__name__ == "ParamsDependency" for k in d.params}
            out[stage.name] = (stage.cmd, paths, keys)
    return out


# -- 1. exact code dependencies ---------------------------------------------------------------

# The one deliberate exception: MLflow tracking is a side effect that never changes a result
# (tests/test_tracking.py proves the outputs byte-identical with and without it), so a change to it
# must not make every result stale (docs/staleness.md).
NOT_A_DEPENDENCY = {"src/sarnet/tracking.py"}


PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def _family_modules(name: str) -> tuple[str, ...]:
    """The family module the registry imports on demand for a stage's model (walked like the script)."""
    model = name.split("@", 1)[1] if name.startswith(("train@", "evaluate@")) else None
    if name.endswith("_xgboost"):
        return ("src/sarnet/families/xgboost.py",)
    if model is None:
        return ()
    return (f"src/sarnet/families/{FAMILY_OF_KIND[PARAMS['models'][model]['kind']]}.py",)


def test_every_stage_declares_every_project_file_its_script_imports(stages):
    assert len(stages) > 30
    for name, (cmd, paths, _) in stages.items():
        script = shlex.split(cmd)[1]
        imported = project_imports(script, *_family_modules(name)) - NOT_A_DEPENDENCY
        assert "src/sarnet/tracking.py" not in paths, f"{name}: tracking is no stage's dependency"
        assert imported - paths == set(), f"{name}: dvc.yaml misses {sorted(imported - paths)}"
        declared_code = {p for p in paths if p.endswith(".py")}
        assert declared_code - imported == set(), f"{name}: declares code it does not import: {sorted(declared_code - imported)}"


def test_a_model_stage_depends_on_its_own_family_and_no_other(stages):
    """The fan-out the family modules exist to prevent: a change to one family stales only its models."""
    families = {p.stem for p in (ROOT / "src" / "sarnet" / "families").glob("*.py")} - {"__init__", "base"}
    for name, (_, paths, _) in stages.items():
        used = {Path(p).stem for p in paths if p.startswith("src/sarnet/families/") and Path(p).stem in families}
        if name.startswith(("train@", "evaluate@")):
            assert used == {FAMILY_OF_KIND[PARAMS["models"][name.split("@")[1]]["kind"]]}, name
        elif name.startswith(("prepare", "train_classifier", "train_mlp_classifier", "calibrate", "fid_table")):
            assert used == set(), f"{name} depends on the families {sorted(used)}"


def test_the_model_table_names_each_entry_s_family_as_the_registry_does():
    from sarnet.families import family_module

    for name, entry in PARAMS["models"].items():
        assert entry["family"] == FAMILY_OF_KIND[entry["kind"]], name
        assert entry["uses"] == family_module(entry["kind"]).USES, name


@pytest.mark.parametrize("family", sorted(set(FAMILY_OF_KIND.values()) - {"xgboost"}))
def test_a_family_s_uses_is_the_one_module_it_builds_on(family):
    """What dvc.yaml declares through `uses`, checked against the module's own imports."""
    import importlib

    module = importlib.import_module(f"sarnet.families.{family}")
    tree = ast.parse((ROOT / "src" / "sarnet" / "families" / f"{family}.py").read_text())
    masked = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
              and node.module.startswith("sarnet.masked.")}
    expected = "/".join(masked.pop().split(".")[1:]) + ".py" if len(masked) == 1 else "families/base.py"
    assert not masked and module.USES == expected


def test_the_import_walk_sees_transitive_lazy_and_on_demand_imports():
    # evaluate.py imports the registry (families/__init__.py), which imports core.model_files; the family
    # module it loads on demand brings the base and its masked layers
    files = project_imports("pipeline/evaluate.py")
    for module in ("families/__init__", "core/model_files", "instruments/loader", "instruments/classifier", "__init__"):
        assert f"src/sarnet/{module}.py" in files
    assert "src/sarnet/families/base.py" not in files and "pipeline/_stage.py" in files and "src/sarnet/cli.py" not in files
    with_family = project_imports("pipeline/evaluate.py", "src/sarnet/families/sarnet_vae.py")
    assert {"src/sarnet/families/base.py", "src/sarnet/masked/semidense.py"} <= with_family - files


# -- 2. params by key ---------------------------------------------------------------------------

def test_each_model_stage_depends_on_its_own_entry_only(stages):
    """One template per action serves the whole `models` table: a model's stages depend on its entry, its
    base (so a change to a base re-runs every model of it, and no other) and its kind's sampling; its
    evaluation also on the protocol."""
    for name, entry in PARAMS["models"].items():
        own = {f"models.{name}", f"model_bases.{entry['base']}", f"sampling.{entry['kind']}"}
        _, _, train_keys = stages[f"train@{name}"]
        assert train_keys == own, name
        _, _, eval_keys = stages[f"evaluate@{name}"]
        assert eval_keys == own | {"evaluate"}, name


def test_evaluations_depend_on_no_single_architecture_param(stages):
    # generators and classifiers are rebuilt from their model files (an evaluation depends on its model's
    # entry as a whole, whose change retrains the model anyway)
    for name, (_, _, keys) in stages.items():
        if name.startswith(("evaluate", "calibrate", "figures")):
            assert not any(k.startswith("train_classifier") for k in keys), name
            assert not any(k.endswith((".hidden", ".patch")) for k in keys), name


# -- 3. strict params ---------------------------------------------------------------------------

def test_an_unknown_key_names_itself_its_section_and_the_nearest_known_key():
    with pytest.raises(ConfigError) as info:
        check_keys("sarnet", {"lr": 0.01, "momentun": 0.9}, ["lr", "momentum", "seed"])
    assert str(info.value) == "params.yaml: unknown key 'momentun' in `sarnet`; did you mean 'momentum'?"
    with pytest.raises(ConfigError, match="has no 'seed'"):
        check_keys("sarnet", {"lr": 0.01, "momentum": 0.9}, ["lr", "momentum", "seed"], required=True)
    with pytest.raises(ConfigError, match="must be a mapping"):
        check_keys("sampling.sarnet_vae", 0.105, ["threshold"])


def test_training_and_xgboost_configs_refuse_mistyped_keys():
    section = {"epochs": 2, "batch_size": 8, "lr": 0.1, "optimizer": "sgd", "momentun": 0.9, "dataset": "mnist"}
    with pytest.raises(ConfigError, match="'momentun' in `sarnet`; did you mean 'momentum'"):
        TrainConfig.from_params(section, "sarnet", other_keys=("dataset",))
    xgb = yaml.safe_load((ROOT / "params.yaml").read_text())["gen_xgboost"] | {"max_bins": 32}
    with pytest.raises(ConfigError, match="'max_bins' in `gen_xgboost`; did you mean 'max_bin'"):
        GenXGBConfig.from_params(xgb, other_keys=("dataset", "digit", "train_limit", "keep_patches"))


def test_sampling_settings_are_required_not_defaulted():
    model = SarNetVAE(4, HIDDEN, 4)
    with pytest.raises(ConfigError, match="`sampling.sarnet_vae` has no 'threshold'"):
        model.generate(2, 0, {})
    with pytest.raises(ConfigError, match="unknown key 'treshold'"):
        model.generate(2, 0, {"threshold": 0.1, "treshold": 0.2})
    import inspect

    from sarnet import explain
    from sarnet.masked.semidense import generate_autoregressive
    for fn in (SarNetVAE.sample, SarNetVAE.inpaint, SarNet.sample, ConvVAE.sample, explain.inpainting_rows,
               explain.interpolation_row, explain.importance_figure):
        for name, parameter in inspect.signature(fn).parameters.items():
            if name in ("threshold", "z_scale", "keep_patches", "n_styles", "temperature", "alpha_max", "k"):
                assert parameter.default is inspect.Parameter.empty, f"{fn.__qualname__}({name}=...) repeats params.yaml"
    assert inspect.signature(generate_autoregressive).parameters["threshold"].default is None


def test_a_stage_refuses_a_mistyped_key_before_any_work(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["models"]["conv_vae_L8"]["epochz"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(ROOT / "pipeline" / "train_model.py"), "conv_vae_L8"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: params.yaml: unknown key 'epochz' in `models.conv_vae_L8`; did you mean 'epochs'?"
    assert not (tmp_path / "models").exists() and not (tmp_path / "checkpoints").exists()


# -- 4. self-describing, deterministic, pickle-free model files --------------------------------

MODELS = {
    "sarnet": lambda: SarNet(HIDDEN, 4, 0, 1.0),
    "sarnet_classes": lambda: SarNet(HIDDEN, 4, 4, 1.0, ssim=False),
    "sarnet_vae": lambda: SarNetVAE(8, HIDDEN, 4),
    "conv_vae": lambda: ConvVAE(4),
    "classifier": lambda: MnistClassifier([4, 8], 16, 0.1),
}

SAVE_IN_FRESH_PROCESS = """
import sys, torch
from sarnet.core.model_files import save_model
from sarnet.families.sarnet_vae import SarNetVAE
torch.manual_seed(7)
save_model(SarNetVAE(8, [[2, 14, 2], [2, 28, 4]], 4), sys.argv[1])
"""


def test_the_same_weights_give_the_same_bytes_in_two_processes(tmp_path):
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        subprocess.run([sys.executable, "-c", SAVE_IN_FRESH_PROCESS, str(path)], check=True, timeout=120)
    torch.manual_seed(7)
    save_model(SarNetVAE(8, HIDDEN, 4), tmp_path / "c.safetensors")
    assert paths[0].read_bytes() == paths[1].read_bytes() == (tmp_path / "c.safetensors").read_bytes()
    torch.manual_seed(8)
    save_model(SarNetVAE(8, HIDDEN, 4), tmp_path / "d.safetensors")
    assert (tmp_path / "d.safetensors").read_bytes() != paths[0].read_bytes()  # the bytes do follow the weights


@pytest.mark.parametrize("name", MODELS)
def test_one_loader_rebuilds_every_kind_from_the_file_alone(name, tmp_path):
    torch.manual_seed(3)
    model = MODELS[name]().eval()
    save_model(model, tmp_path / "m.safetensors")
    loaded = (load_instrument if name == "classifier" else load_model)(tmp_path / "m.safetensors")
    assert type(loaded) is type(model) and loaded.model_args == model.model_args and not loaded.training
    for (key, a), (key_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert key == key_b and torch.equal(a, b)
    head = (tmp_path / "m.safetensors").read_bytes()[:4096]
    assert b'"kind\\":\\"' + model.kind.encode() in head and b"pickle" not in head


def test_bad_model_files_give_one_clear_line(tmp_path):
    torch.manual_seed(0)
    good = tmp_path / "vae.safetensors"
    save_model(SarNetVAE(8, HIDDEN, 4), good)
    cases = {
        "truncated": (good.read_bytes()[: len(good.read_bytes()) // 2], "MiB of weights, but the file holds"),  # issue 31
        "cut": (good.read_bytes()[:-4], "unreadable model file"),  # too short by less than the weights' size check sees
        "empty": (b"", "not a sarnet model file"),
        "pickle": (None, "not a sarnet model file"),
        "text": (b"hello, I am not a model\n", "not a sarnet model file"),
    }
    torch.save({"w": torch.zeros(2)}, tmp_path / "pickle")
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError, match=message) as info:
            load_model(path)
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="a sarnet_vae model file, expected a conv_vae"):
        load_model(good, kind="conv_vae")
    with pytest.raises(DataError, match="a sarnet_vae model file, not an instrument"):
        load_instrument(good)
    save_model(MnistClassifier([4, 8], 16, 0.1), tmp_path / "cnn.safetensors")
    with pytest.raises(DataError, match="a classifier model file, not a generator"):
        load_model(tmp_path / "cnn.safetensors")
    with pytest.raises(DataError, match="no such model file"):
        load_model(tmp_path / "absent.safetensors")


def _forged(path, kind, args):
    """A 200-byte safetensors file whose sarnet metadata describes a `kind` built from `args` (issue 31)."""
    import json

    from safetensors.torch import save_file

    from sarnet.core.model_files import FORMAT, META_KEY

    save_file({"w": torch.zeros(2)}, str(path), metadata={META_KEY: json.dumps({"format": FORMAT, "kind": kind, "args": args})})
    return path


VQ = {"code_dim": 16, "codebook_size": 64, "commitment": 0.25, "prior_channels": 64, "ae_epochs": 1, "ae_lr_decay": 0.5,
      "prior_lr": 0.001}
HOSTILE_ARGS = {  # every generator family and both instruments, asking for far more than the file holds
    "sarnet": {"hidden": [[10**9, 14, 2], [2, 28, 4]], "patch": 4, "classes": 0, "loss_power": 1.0, "ssim": True},
    "sarnet_vae": {"latent_dim": 10**9, "hidden": HIDDEN, "patch": 4},
    "conv_vae": {"latent_dim": 10**9},
    "beta_vae": {"latent_dim": 10**9, "kl_weight": 2.0},
    "gan_mlp": {"noise_dim": 10**9},
    "dcgan": {"arch": "tf_tutorial", "noise_dim": 100, "width": 16 * 10**6},
    "pixelcnn": {"channels": 2048, "blocks": 1, "levels": 4},  # their sizes are capped at 4096: MBs, not TBs
    "pixelrnn_row": {"hidden": 2048, "layers": 1, "levels": 4},
    "vqvae": VQ | {"codebook_size": 10**9},
    "classifier": {"channels": [10**6], "hidden": 10**6, "dropout": 0.1},
    "mlp_classifier": {"hidden": [10**9]},
}


@pytest.mark.parametrize("kind", HOSTILE_ARGS)
def test_a_model_file_asking_for_more_than_it_holds_is_refused_before_allocating(kind, tmp_path):
    path = _forged(tmp_path / "m.safetensors", kind, HOSTILE_ARGS[kind])
    load = load_instrument if kind.endswith("classifier") else load_model
    with pytest.raises(DataError, match=r"m\.safetensors: the \w+ it describes needs [\d.]+ [KMGT]iB of weights, "
                                        r"but the file holds \d+ bytes") as info:
        load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind, args, message", [
    ("pixelcnn", {"channels": 8, "blocks": 4097, "levels": 4}, "blocks must be an integer in 1..4096, got 4097"),
    ("pixelrnn_row", {"hidden": 8, "layers": 4097, "levels": 4}, "layers must be an integer in 1..4096, got 4097"),
    ("sarnet_vae", {"latent_dim": 2, "hidden": [[1, 7, 1]] * 65, "patch": 4}, "hidden: at most 64 layers, got 65"),
    ("classifier", {"channels": [1] * 5, "hidden": 2, "dropout": 0.1}, "at most 4 conv blocks, got 5"),
    ("mlp_classifier", {"hidden": [1] * 65}, "at most 64 hidden layers, got 65"),
    ("conv_vae", {"latent_dim": 10**30}, "cannot rebuild the conv_vae it describes"),
])
def test_layer_counts_a_file_asks_for_are_bounded_before_building(kind, args, message, tmp_path):
    """Counts that are Python loops in a constructor (blocks, layer lists) are bounded there: sizing on the
    meta device would still build every module."""
    path = _forged(tmp_path / "m.safetensors", kind, args)
    with pytest.raises(DataError, match=re.escape(message)):
        (load_instrument if kind.endswith("classifier") else load_model)(path)


def test_a_model_path_that_is_no_regular_file_says_what_it_is(tmp_path):
    import os
    import threading

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    cases = {tmp_path / "fifo": "not a regular file (a FIFO)", Path("/dev/zero"): "not a regular file (a character device)",
             tmp_path / "loop_a": "cannot open the model file (a symlink loop)", tmp_path: "not a regular file (a directory)"}
    for path, message in cases.items():
        errors = []
        worker = threading.Thread(target=lambda: errors.append(pytest.raises(DataError, load_model, path).value), daemon=True)
        worker.start()
        worker.join(timeout=20)  # a FIFO must not wait for a writer
        assert not worker.is_alive(), f"{path} blocked"
        assert message in str(errors[0]) and str(path) in str(errors[0]), str(errors[0])


def test_params_refuse_a_key_given_twice_naming_it_and_its_lines(tmp_path):
    from sarnet.core.params import read_params_file

    text = (ROOT / "params.yaml").read_text()
    entry = "  conv_vae_L8: {kind: conv_vae"
    assert text.count(entry) == 1
    text = text.replace(entry, "  conv_vae_L16: {kind: conv_vae, family: conv_vae, latent_dim: 99, base: conv_vae}\n" + entry)
    (tmp_path / "params.yaml").write_text(text)
    first, second = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith("  conv_vae_L16:")]
    with pytest.raises(ConfigError) as info:
        read_params_file(tmp_path / "params.yaml", hint="")
    assert str(info.value) == (f"{tmp_path / 'params.yaml'}: duplicate key 'conv_vae_L16' on line {second} (first on line "
                               f"{first}); YAML would silently keep the last")
    (tmp_path / "merge.yaml").write_text("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\n")  # overriding a merged key is no duplicate
    assert read_params_file(tmp_path / "merge.yaml", hint="") == {"base": {"x": 1, "y": 2}, "m": {"x": 3, "y": 2}}
    assert read_params_file(ROOT / "params.yaml", hint="") == PARAMS


def test_latent_sizes_and_counts_have_upper_bounds():
    from sarnet.core.params import MAX_LATENT_DIM, check_int, check_latent_dim

    for value in (None, 1, 128, MAX_LATENT_DIM):
        check_latent_dim("models.x", value)
    with pytest.raises(ConfigError, match=r"^params.yaml: `models.x.latent_dim` must be <= 4,096, got 1,000,000,000$"):
        check_latent_dim("models.x", 10**9)
    with pytest.raises(ConfigError, match="`models.x.latent_dim` must be a positive integer, got 0"):
        check_latent_dim("models.x", 0)
    with pytest.raises(ConfigError, match="`evaluate.n_images` must be <= 10, got 11"):
        check_int("evaluate", "n_images", 11, minimum=1, maximum=10)
    for entry in PARAMS["models"].values():  # the bounds leave every model of the table in range
        check_latent_dim("models", entry.get("latent_dim"))


# -- 5. layers visible in the imports ----------------------------------------------------------

PACKAGE = ROOT / "src" / "sarnet"


def _module_name(path: Path) -> str:
    """`core.data` for src/sarnet/core/data.py, `families` for src/sarnet/families/__init__.py."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports (`from sarnet.core.data import x`, `from sarnet.families import y`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        found = [node.module] if isinstance(node, ast.ImportFrom) and node.module else [
            a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in found:
            if name.startswith("sarnet."):
                dotted = name.removeprefix("sarnet.")
                names.add(dotted if dotted in modules else dotted.rsplit(".", 1)[0])
    return names - {_module_name(path)}


# A family imports no other family; these declared exceptions are the only ones (none today: the
# VQ-VAE's prior and the pixel models share the masked convolutions below both instead).
DECLARED_FAMILY_IMPORTS: dict[str, set[str]] = {}


def test_the_package_follows_its_module_map_without_cycles():
    import sarnet

    lines = [re.split(r"\s{2,}", line.strip())[0] for line in sarnet.__doc__.split("Module map")[1].split(":\n", 1)[1].splitlines()
             if line.strip()]
    layer = {name.strip(): i for i, line in enumerate(lines) for name in line.strip().split(",")}
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}
    assert set(files) == set(layer), f"module map differs from the package: {sorted(set(files) ^ set(layer))}"
    graph = {m: _module_imports(path, set(files)) for m, path in files.items()}
    for module, imported in graph.items():
        for other in imported:
            assert layer[other] <= layer[module], f"{module} (line {layer[module] + 1}) imports {other} (line {layer[other] + 1})"
    # within one line, no cycle either
    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph[start])
    assert [m for m in files if reaches(m, m)] == []


def test_each_family_is_a_module_of_its_own_importing_no_other_family():
    families = {m for m in FAMILY_OF_KIND.values()}
    assert {p.stem for p in (PACKAGE / "families").glob("*.py")} == families | {"__init__", "base"}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for family in families:
        imported = _module_imports(PACKAGE / "families" / f"{family}.py", modules)
        others = {m.split(".")[1] for m in imported if m.startswith("families.")} - {"base"}
        assert others <= DECLARED_FAMILY_IMPORTS.get(family, set()), f"{family} imports the families {sorted(others)}"
        assert "families" not in imported, f"{family} imports the registry"  # the registry imports families, not back
    # the core, the masked layers and the instruments know no family
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path).startswith(("core", "masked", "instruments")):
            imported = _module_imports(path, modules)
            assert not any(m.startswith("families") for m in imported), f"{_module_name(path)} imports a family"


def test_the_readme_layout_names_what_the_tree_has():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    named, parent = set(), ""
    for line in block.splitlines():
        if not line.strip():
            continue
        path = line.split()[0]
        if line.startswith("  "):  # a folder inside the last top-level one
            path = parent + path
        else:
            parent = path
        named.add(path.rstrip("/"))
        assert (ROOT / path).exists(), f"README's layout names {path}, which the tree lacks"
    folders = {p.relative_to(ROOT).as_posix() for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= named, f"README's layout misses {sorted(folders - named)}"


def test_the_pipeline_and_cli_do_not_switch_on_a_model_kind_to_sample():
    for path in [*(ROOT / "pipeline").glob("*.py"), PACKAGE / "cli.py", PACKAGE / "families" / "__init__.py"]:
        text = path.read_text()
        assert not re.search(r"""kind\s*==\s*["'](sarnet|sarnet_vae|conv_vae)["'].*\n.*sample""", text), path.name
        assert "generate_model_samples" not in text and "state_dict" not in text, path.name


# -- 6. the facts the code relies on live in the repository -----------------------------------

@pytest.mark.parametrize("doc", ["protocol", "baselines"])
def test_every_cited_docs_section_exists_and_no_outside_file_is_cited(doc):
    headings = set(re.findall(r"^## (.+)$", (ROOT / "docs" / f"{doc}.md").read_text(), flags=re.M))
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "pipeline").glob("*.py"), *(ROOT / "tests").glob("*.py"),
             ROOT / "dvc.yaml", ROOT / "params.yaml"]
    cited = set()
    for path in files:
        text = path.read_text()
        for outside in ("REFERENCE.md", "BASELINES.md"):  # ../shared/spec: not in the repository
            assert outside not in text or path.name == "test_foundation.py", f"{path.name} cites {outside}"
        for quoted in re.findall(rf'docs/{doc}\.md((?:,?\s+"[^"]+")+)', text):  # `docs/x.md "A", "B"`
            cited.update(re.findall(r'"([^"]+)"', quoted))
    assert cited and cited <= headings, f"missing sections of docs/{doc}.md: {sorted(cited - headings)}"


def test_damaged_or_diverged_weights_are_refused_not_sampled(tmp_path):
    torch.manual_seed(0)
    model = SarNetVAE(8, HIDDEN, 4)
    save_model(model, tmp_path / "good.safetensors")
    data = bytearray((tmp_path / "good.safetensors").read_bytes())
    data[-100] ^= 0x40  # one flipped bit in the last tensor's bytes: still a readable file, other weights
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(DataError, match="do not match the checksum"):
        load_model(tmp_path / "flipped.safetensors")
    with torch.no_grad():
        model.decoder.layers[0].weight.fill_(float("nan"))
    save_model(model, tmp_path / "nan.safetensors")
    with pytest.raises(DataError, match="non-finite weights in decoder.layers.0.weight"):
        load_model(tmp_path / "nan.safetensors")
    assert isinstance(load_model(tmp_path / "good.safetensors"), SarNetVAE)


@pytest.mark.parametrize("script, args, section, key, value, message", [
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "lr", "fast", "`models.conv_vae_L8.lr` must be a number, got 'fast'"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "epochs", "2", "`models.conv_vae_L8.epochs` must be an integer, got '2'"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "epochs", 1.5, "`models.conv_vae_L8.epochs` must be an integer, got 1.5"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "train_limit", -500, "`models.conv_vae_L8.train_limit` must be >= 1, got -500"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "train_limit", 0, "`models.conv_vae_L8.train_limit` must be >= 1, got 0"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "digit", "5", "`models.conv_vae_L8.digit` must be an integer or null, got '5'"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "latent_dim", "8", "`models.conv_vae_L8.latent_dim` must be a positive integer, got '8'"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "latent_dim", 10**9, "`models.conv_vae_L8.latent_dim` must be <= 4,096, got 1,000,000,000"),
    ("train_model.py", ["conv_vae_L8"], "models.conv_vae_L8", "family", "gans", "`models.conv_vae_L8.family` must be 'conv_vae' for a conv_vae"),
    ("train_model.py", ["conv_vae_L7"], None, None, None, "no model 'conv_vae_L7' under `models`"),
    ("evaluate.py", ["conv_vae_L8"], "evaluate", "sets_by_model", "three", "`evaluate.sets_by_model` must map"),
    ("evaluate.py", ["conv_vae_L8"], "evaluate", "sets", 0, "`evaluate.sets` must be >= 1, got 0"),
    ("evaluate.py", ["conv_vae_L8"], "evaluate", "n_images", 10**9, "`evaluate.n_images` must be <= 100,000, got 1,000,000,000"),
    ("evaluate.py", ["conv_vae_L8"], "evaluate", "sets", 10**6, "`evaluate.sets` must be <= 1,000, got 1,000,000"),
    ("calibrate.py", [], "calibrate", "n_images", 10**9, "`calibrate.n_images` must be <= 100,000, got 1,000,000,000"),
])
def test_params_of_the_wrong_type_or_range_are_refused_before_any_work(script, args, section, key, value, message, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if section is not None:
        where = params
        for part in section.split("."):
            where = where[part]
        where[key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(ROOT / "pipeline" / script), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_names_from_params_reach_the_shell_quoted(tmp_path, stages):
    # every name the committed params put on a command line is a plain word ...
    for name, (cmd, _, _) in stages.items():
        assert all(re.fullmatch(r"[A-Za-z0-9_./]+", arg) for arg in shlex.split(cmd)), f"{name}: {cmd}"
    # ... and a hostile one is passed as one argument, never run: dvc.yaml as DVC resolves it, run by a shell
    from dvc.repo import Repo

    for name in ("dvc.yaml", "params.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["prepare"]["datasets"] = ["fashion$(touch pwned)`touch pwned2`"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    Repo.init(str(tmp_path), no_scm=True)
    with Repo(str(tmp_path)) as repo:
        commands = {s.name: s.cmd for s in repo.index.stages}
    cmd = commands.get("prepare@fashion$(touch pwned)`touch pwned2`")
    assert cmd is not None, sorted(commands)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n')
    (shim / "python").chmod(0o755)
    subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env={"PATH": f"{shim}:/usr/bin:/bin"}, check=True, timeout=30)
    assert (shim / "args").read_text().splitlines() == ["pipeline/prepare.py", "fashion$(touch pwned)`touch pwned2`"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_the_tests_thesis_settings_are_params_yamls():
    """tests/reference.py writes the thesis architecture and sampling settings out, so tests do not read
    params.yaml; they must still be params.yaml's, or the tests check another model than the pipeline's."""
    import reference

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for base in ("sarnet", "sarnet_vae"):
        assert params["model_bases"][base]["hidden"] == reference.HIDDEN, base
        assert params["model_bases"][base]["patch"] == reference.PATCH, base
    for kind, settings in reference.SAMPLING.items():
        assert params["sampling"][kind] == settings, kind
