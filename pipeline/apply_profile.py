"""Overlay a profile (e.g. params-ci.yaml) onto params.yaml in place, keeping its comments and layout.

Only the profile's keys change (a deep merge); a profile key params.yaml does not have is refused,
so a typo cannot add a setting nothing reads. The profile's `remove` lists dotted keys to delete
(`models.sarnet_vae_L64`: a model the profile does not train).
"""

import sys
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq


def merge(base, override, where: str = "", bases=None, inherited=()) -> None:
    """Write `override`'s values into `base` (ruamel's commented maps), recursing into sections. A `models`
    entry may also gain a key its base (`bases`: params.yaml's `model_bases`) has (`inherited`)."""
    for key, value in override.items():
        name = f"{where}{key}"
        if key not in base and key not in inherited:
            sys.exit(f"error: profile key {name!r} is not in params.yaml (typo?)")
        if where == "models." and isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, f"{name}.", bases, inherited=(bases or {}).get(base[key].get("base"), {}))
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, f"{name}.", bases)
        elif isinstance(value, list) and isinstance(base.get(key), CommentedSeq):
            seq = CommentedSeq(value)  # a list keeps the style it had: `[128, 8]` stays on one line
            if base[key].fa.flow_style():
                seq.fa.set_flow_style()
            base[key] = seq
        else:
            base[key] = value


if __name__ == "__main__":
    profile = Path(sys.argv[1])
    yaml = YAML()  # round-trip mode: comments, key order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    yaml.representer.add_representer(  # `null`, as written, not an empty value
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    params_path = Path("params.yaml")
    for path in (params_path, profile):
        if not path.is_file():
            sys.exit(f"error: {path}: no such file (run from the project root: python pipeline/apply_profile.py params-ci.yaml)")
    params = yaml.load(params_path)
    overlay = YAML(typ="safe").load(profile) or {}
    merge(params, {key: value for key, value in overlay.items() if key != "remove"}, bases=params.get("model_bases", {}))
    for dotted in overlay.get("remove", []):
        *parents, last = dotted.split(".")
        section = params
        for key in parents:
            section = section.get(key) if isinstance(section, dict) else None
        if not isinstance(section, dict) or last not in section:
            sys.exit(f"error: profile removes {dotted!r}, which params.yaml does not have")
        del section[last]
    with params_path.open("w") as fh:
        yaml.dump(params, fh)
    print(f"applied {profile} to params.yaml")
