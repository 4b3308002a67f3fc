"""Which generator a training or evaluation stage is about: an entry of params.yaml's `models` table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _stage import DATA_KEYS, PARAMS_FILE, note_params_read, params

from sarnet.core.data import dataset_spec
from sarnet.core.errors import SarnetError
from sarnet.core.model_files import check_model_name, model_path
from sarnet.core.params import TABLE_KEYS, check_latent_dim, read_params_file, resolve_models
from sarnet.families import FAMILY_OF_KIND, family_module, model_class


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the `models` table, checked."""

    name: str  # its key: models/<kind>/<name>.safetensors, metrics/train/<name>.json, …
    kind: str
    latent: int | None
    params: dict[str, Any]  # its settings (architecture, training, data: its base's, then its own), no table keys

    @property
    def section(self) -> str:
        """Where the entry is in params.yaml, for messages."""
        return f"models.{self.name}"

    @property
    def model_path(self) -> Path:
        return model_path(self.kind, self.name)

    def stage(self, action: str) -> str:
        """This model's `train` or `evaluate` stage in dvc.yaml (the MLflow run name outside DVC too)."""
        return f"{action}_xgboost" if self.kind == "gen_xgboost" else f"{action}@{self.name}"


def xgboost_spec() -> ModelSpec:
    """The generative XGBoost, whose section `gen_xgboost` is its own (its training is not the shared loop)."""
    settings = params("gen_xgboost")
    missing = [k for k in DATA_KEYS if k not in settings]
    if missing:
        raise SarnetError(f"{PARAMS_FILE}: `gen_xgboost` has no '{missing[0]}'")
    return ModelSpec("gen_xgboost", "gen_xgboost", None, settings)


def model_spec(*args: str) -> ModelSpec:
    """The ModelSpec of a stage command's one argument, a key of `models`; a bad name or entry is one
    line, before any work."""
    if len(args) != 1:
        raise SarnetError("usage: <name>, a key of params.yaml's `models`")
    name = args[0]
    entries = params("models", note=False)  # the stage depends on its own entry and base only: noted below
    if name not in entries:
        raise SarnetError(f"{PARAMS_FILE}: no model {name!r} under `models` (have: {', '.join(entries)})")
    if not isinstance(entries[name], dict) or not isinstance(entries[name].get("kind"), str):
        raise SarnetError(f"{PARAMS_FILE}: `models.{name}` must be a mapping with a `kind`")
    check_model_name(name)
    all_params = read_params_file(PARAMS_FILE, hint="run stages from the project root")
    entry = resolve_models(all_params)[name]
    note_params_read(f"models.{name}", entries[name])
    base = entries[name].get("base")
    if isinstance(base, str) and base in all_params.get("model_bases", {}):
        note_params_read(f"model_bases.{base}", all_params["model_bases"][base])
    kind = entry["kind"]
    if kind not in FAMILY_OF_KIND:
        raise SarnetError(f"{PARAMS_FILE}: `models.{name}.kind`: unknown kind {kind!r} (known: {', '.join(FAMILY_OF_KIND)})")
    if entry.get("family") != FAMILY_OF_KIND[kind]:  # dvc.yaml's code dependency comes from it
        raise SarnetError(f"{PARAMS_FILE}: `models.{name}.family` must be {FAMILY_OF_KIND[kind]!r} for a {kind}, "
                          f"got {entry.get('family')!r}")
    latent = entry.get("latent_dim")
    check_latent_dim(f"models.{name}", latent)
    if kind != "gen_xgboost":
        needs_latent = model_class(kind).needs_latent
        if needs_latent != (latent is not None):
            raise SarnetError(f"{PARAMS_FILE}: `models.{name}`: a {kind} " + (
                "needs a `latent_dim`" if needs_latent else f"has no latent dimension (got latent_dim {latent})"))
        uses = family_module(kind).USES  # dvc.yaml declares the entry's `uses`: it must be the family's
        if entry.get("uses") != uses:
            raise SarnetError(f"{PARAMS_FILE}: `models.{name}.uses` must be {uses!r} (what the {kind} family builds on), "
                              f"got {entry.get('uses')!r}")
    settings = {k: v for k, v in entry.items() if k not in TABLE_KEYS} | {"dataset": entry.get("dataset")}
    missing = [k for k in DATA_KEYS if k not in entry]
    if missing:
        raise SarnetError(f"{PARAMS_FILE}: `models.{name}` has no '{missing[0]}' (nor has its base)")
    dataset_spec(settings["dataset"])  # an unknown dataset name fails here, before any work
    return ModelSpec(name, kind, latent, settings)
