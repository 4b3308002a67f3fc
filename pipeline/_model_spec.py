"""Which generator a training or evaluation stage is about, from its command's arguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _stage import DATA_KEYS, PARAMS_FILE, latent_arg, model_params, params

from sarnet.data import dataset_spec
from sarnet.errors import SarnetError
from sarnet.model_files import SUFFIX
from sarnet.names import generator_name, model_path

BASELINE_KEYS = ("kind", "latent_dim", "budget_minutes")  # what a `baselines` entry says besides its model section


@dataclass(frozen=True)
class ModelSpec:
    """A generator as a stage command names it: `<kind> [latent [variant]]` (a thesis model, `-` for no
    latent size) or `baseline <name>` (an entry of params.yaml's `baselines`)."""

    kind: str
    latent: int | None
    variant: str | None
    name: str  # its files and runs: models/<kind>/<name>.safetensors, metrics/train/<name>.json, …
    params: dict[str, Any]  # its model section, variants and baselines resolved
    section: str  # where that section is in params.yaml, for messages: `sarnet_vae_data.fashion`
    baseline: bool = False

    @property
    def model_path(self) -> Path:
        return Path("models") / self.kind / f"{self.name}{SUFFIX}" if self.baseline else model_path(
            self.kind, self.latent, data=self.variant)

    def dvc_stage(self, action: str) -> str:
        """This model's `train` or `evaluate` stage in dvc.yaml (the MLflow run name outside DVC too)."""
        if self.baseline:
            return f"{action}_baseline@{self.name}"
        if self.variant is not None:
            return f"{action}_{self.kind}_data@{self.variant}"
        if self.latent is None:
            return f"{action}_{self.kind}" if action == "train" else f"evaluate@{self.kind}"
        return f"train_{self.kind}@{self.latent}" if action == "train" else f"evaluate_vae@{self.kind}-{self.latent}"


def model_spec(*args: str) -> ModelSpec:
    """The ModelSpec of a stage command's arguments; a bad name or entry is one line, before any work."""
    if args[:1] == ("baseline",):
        if len(args) != 2:
            raise SarnetError("usage: baseline <name>, a key of params.yaml's `baselines`")
        name = args[1]
        entries = params("baselines")
        if name not in entries:
            raise SarnetError(f"{PARAMS_FILE}: no baseline {name!r} under `baselines` (have: {', '.join(entries)})")
        entry = entries[name]
        if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
            raise SarnetError(f"{PARAMS_FILE}: `baselines.{name}` must be a mapping with a `kind`")
        generator_name(entry["kind"], entry.get("latent_dim"))  # a known kind, a latent size where it needs one
        generator_name(entry["kind"], entry.get("latent_dim"), name)  # and a name fit for files
        section = {k: v for k, v in entry.items() if k not in BASELINE_KEYS}
        missing = [k for k in DATA_KEYS if k not in section]
        if missing:
            raise SarnetError(f"{PARAMS_FILE}: `baselines.{name}` has no '{missing[0]}'")
        dataset_spec(section["dataset"])
        return ModelSpec(entry["kind"], entry.get("latent_dim"), None, name, section, f"baselines.{name}", baseline=True)
    if not 1 <= len(args) <= 3:
        raise SarnetError("usage: <kind> [latent_dim [variant]] or baseline <name>")
    kind, latent, variant = args[0], latent_arg(args[1] if len(args) > 1 else None), args[2] if len(args) > 2 else None
    name = generator_name(kind, latent, variant)
    return ModelSpec(kind, latent, variant, name, model_params(kind, variant),
                     kind if variant is None else f"{kind}_data.{variant}")
