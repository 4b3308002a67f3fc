"""Strict reading of params.yaml sections: a mistyped key is an error, never silently dropped."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sarnet.core.errors import ConfigError

# Upper bounds of counts and sizes (docs/params.md "Bounds"): far above any run of the thesis or the seeds
# (params.yaml: 10,000 images a set, 50 sets, latent sizes up to 128), far below what exhausts a machine.
MAX_IMAGES = 100_000  # images per FID set: 100,000 × 784 float32 pixels are 314 MB, generated and real alike
MAX_SETS = 1_000  # FID sets per model
MAX_LATENT_DIM = 4096  # a latent size (an image has 784 pixels); 10⁹ asked a VAE for 512 GB


def _strict_loader():
    """A YAML SafeLoader that refuses a mapping key given twice (plain YAML silently keeps the last, so a
    duplicated `models` entry or setting would be lost without a word)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys are meant to be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    given_before = key in seen
                except TypeError:  # an unhashable key: construct_mapping's own error says so
                    continue
                first = seen.setdefault(key, line)
                if given_before:
                    raise _DuplicateKey(f"duplicate key {key!r} on line {line} (first on line {first}); "
                                        "YAML would silently keep the last")
            return super().construct_mapping(node, deep)

    return StrictLoader


class _DuplicateKey(Exception):
    pass


def read_params_file(path: str | os.PathLike, hint: str) -> dict[str, Any]:
    """A whole params file as a mapping of sections; a missing, unreadable or malformed file is one line
    (`hint` says where the file should come from)."""
    import yaml

    try:
        loaded = yaml.load(Path(path).read_text(), Loader=_strict_loader())
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found ({hint})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory, not a params file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    return loaded


def check_keys(section: str, given: Mapping[str, Any], known: Iterable[str],
               required: bool | Iterable[str] = False) -> None:
    """ConfigError naming the first unknown key of `section` and the nearest known one, and the first
    missing required key (`required=True`: every known key; or the keys given)."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"params.yaml: `{section}` must be a mapping of keys to values, got {type(given).__name__}")
    known = sorted(set(known))
    unknown = sorted(set(given) - set(known))
    if unknown:
        key = str(unknown[0])
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(known) or 'none'}"
        raise ConfigError(f"params.yaml: unknown key '{key}' in `{section}`{hint}")
    if required:
        missing = [k for k in (known if required is True else sorted(required)) if k not in given]
        if missing:
            raise ConfigError(f"params.yaml: `{section}` has no '{missing[0]}'")


def check_int(section: str, key: str, value: Any, minimum: int | None = None, optional: bool = False,
              maximum: int | None = None) -> None:
    """ConfigError unless `value` is an integer (not a bool, float or string) in minimum..maximum; None if `optional`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"params.yaml: `{section}.{key}` must be an integer{' or null' if optional else ''}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"params.yaml: `{section}.{key}` must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"params.yaml: `{section}.{key}` must be <= {maximum:,}, got {value:,}")


def check_latent_dim(section: str, value: Any) -> None:
    """ConfigError unless a model entry's `latent_dim` is None (a kind without one) or an integer in
    1..MAX_LATENT_DIM."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"params.yaml: `{section}.latent_dim` must be a positive integer, got {value!r}")
    check_int(section, "latent_dim", value, maximum=MAX_LATENT_DIM, optional=True)


def check_number(section: str, key: str, value: Any, positive: bool = False) -> None:
    """ConfigError unless `value` is a finite real number (> 0 if `positive`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"params.yaml: `{section}.{key}` must be a number, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(f"params.yaml: `{section}.{key}` must be > 0, got {value}")


def check_data_keys(section: str, params: Mapping[str, Any]) -> None:
    """The keys every model section has about its training data: dataset, digit, train_limit."""
    if not isinstance(params.get("dataset"), str):
        raise ConfigError(f"params.yaml: `{section}.dataset` must be a dataset name, got {params.get('dataset')!r}")
    check_int(section, "digit", params.get("digit"), minimum=0, optional=True)
    if params.get("digit") is not None and params["digit"] > 9:
        raise ConfigError(f"params.yaml: `{section}.digit` must be a class 0..9 or null, got {params['digit']}")
    check_int(section, "train_limit", params.get("train_limit"), minimum=1, optional=True)


TABLE_KEYS = ("kind", "family", "uses", "dataset", "latent_dim", "base")  # what a `models` entry says about what it is


def resolve_models(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """params.yaml's `models` table with each entry's `base` (a `model_bases` entry) laid under its own keys:
    name -> every setting of that model, its table keys included. A missing or unknown base is one line."""
    entries, bases = params.get("models"), params.get("model_bases", {})
    if not isinstance(entries, Mapping) or not isinstance(bases, Mapping):
        raise ConfigError("params.yaml: `models` and `model_bases` must be mappings of names to entries")
    resolved = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"params.yaml: `models.{name}` must be a mapping with a `kind`, got {type(entry).__name__}")
        base = entry.get("base")
        if base not in bases or not isinstance(bases[base], Mapping):
            raise ConfigError(f"params.yaml: `models.{name}.base` must name an entry of `model_bases` "
                              f"({', '.join(map(str, bases))}), got {base!r}")
        resolved[name] = {**bases[base], **entry}
    return resolved
