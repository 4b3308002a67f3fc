"""Deep-merge a profile (e.g. params-ci.yaml) over params.yaml, in place."""

import sys
from pathlib import Path

import yaml


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if key not in base:
            sys.exit(f"error: profile key {key!r} is not in params.yaml (typo?)")
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base[key], dict) else value
    return out


if __name__ == "__main__":
    profile = Path(sys.argv[1])
    params = yaml.safe_load(Path("params.yaml").read_text())
    merged = merge(params, yaml.safe_load(profile.read_text()) or {})
    Path("params.yaml").write_text(f"# params.yaml with {profile} applied\n" + yaml.safe_dump(merged, sort_keys=False))
    print(f"applied {profile} to params.yaml")
