"""Stage `xgboost_variants`: the trained generative XGBoost generated with each set of generation switches
in params.yaml's `gen_xgboost_variants` (the thesis text's draw, the notebook's choices, ours), scored like
every row but over that section's `sets` (both instruments, the five-rate), with one sample grid each.

The variants share the trained predictors and refiners: the switches act at generation only, so one
training answers "which generation draws fives" (issue 17). Writes metrics/gen_xgboost_variants.json,
a table in metrics/gen_xgboost_variants.md and metrics/gen_xgboost_variants/<variant>.png.
"""

import dataclasses

import numpy as np
import torch
from _stage import params, run_name, stage, write_results
from tqdm import tqdm

from sarnet.core.data import load_prepared, to_unit_tensor
from sarnet.core.device import default_device
from sarnet.core.errors import ConfigError
from sarnet.core.files import save_grid, write_text
from sarnet.core.params import MAX_SETS, check_int, check_keys
from sarnet.families.xgboost import GenerativeXGBoost
from sarnet.instruments.classifier import INSTRUMENT_NAMES, instrument_path
from sarnet.instruments.fid import FidProtocol, FidScorer, fid_over_sets
from sarnet.instruments.loader import load_instrument
from sarnet.tracking import stage_run

GENERATION_SWITCHES = ("randomisation", "randomise_rising", "refiner_offset", "alpha", "i_max")
GRIDS = "metrics/gen_xgboost_variants"


def variant_model(base: GenerativeXGBoost, name: str, switches: dict) -> GenerativeXGBoost:
    """The trained model with other generation switches; training keys cannot change after training."""
    if not isinstance(switches, dict) or not switches:
        raise ConfigError(f"params.yaml: `gen_xgboost_variants.variants.{name}` must map switches to values")
    unknown = sorted(set(switches) - set(GENERATION_SWITCHES))
    if unknown:
        raise ConfigError(f"params.yaml: `gen_xgboost_variants.variants.{name}` sets {unknown[0]!r}; a variant "
                          f"may set only the generation switches {', '.join(GENERATION_SWITCHES)}")
    return GenerativeXGBoost(dataclasses.replace(base.config, **switches), base.predictors, base.refiners)


@stage
def main() -> None:
    p = params("gen_xgboost_variants")
    check_keys("gen_xgboost_variants", p, ("sets", "variants"), required=True)
    check_int("gen_xgboost_variants", "sets", p["sets"], minimum=1, maximum=MAX_SETS)
    if not isinstance(p["variants"], dict) or not p["variants"]:
        raise ConfigError("params.yaml: `gen_xgboost_variants.variants` must name at least one variant")
    evaluation, model_params = params("evaluate"), params("gen_xgboost")
    protocol = FidProtocol(evaluation["n_images"], p["sets"], evaluation["seed"])
    settings = params("sampling")["gen_xgboost"]
    base = GenerativeXGBoost.load("models/gen_xgboost")
    variants = {name: variant_model(base, name, switches) for name, switches in p["variants"].items()}
    dataset, digit = model_params["dataset"], model_params["digit"]
    prepared = load_prepared(f"data/prepared/{dataset}.npz", digit=digit)
    real_pool, train_pool = to_unit_tensor(prepared.test.images), to_unit_tensor(prepared.train.images)
    device = default_device()
    instruments = {name: FidScorer(load_instrument(instrument_path(dataset, name), device, name), device=device)
                   for name in INSTRUMENT_NAMES}

    records: dict[str, dict[str, float]] = {}
    with stage_run(run_name("xgboost_variants"), params={"variants": p["variants"], "sets": p["sets"]},
                   dataset=dataset, digit=digit, tags={"model": "gen_xgboost", "evaluation": "fid"}) as tracker:
        for name, model in tqdm(variants.items(), desc="variants", unit="variant"):
            result = fid_over_sets(lambda n, seed, model=model: torch.from_numpy(model.generate(n, seed, settings)),
                                   instruments, real_pool, protocol, label=digit, train_pool=train_pool)
            save_grid(result.preview, f"{GRIDS}/{name}.png")
            records[name] = {**{i: {"mean": round(result.mean(i), 6), "std": round(result.std(i), 6)} for i in instruments},
                             "class_rate": round(float(np.mean(result.class_rate)), 6),
                             "sharpness": round(float(np.mean(result.sharpness)), 6)}
            tracker.log_metrics({f"{name}.{i}.{stat}": records[name][i][stat] for i in instruments for stat in ("mean", "std")}
                                | {f"{name}.{key}": records[name][key] for key in ("class_rate", "sharpness")})
            tracker.log_artifact(f"{GRIDS}/{name}.png", "samples")
        write_results("gen_xgboost_variants", records)
        write_text("metrics/gen_xgboost_variants.md", variants_markdown(p["variants"], records, protocol))
    best = min(records, key=lambda name: both(records[name]))
    print(f"xgboost_variants: best on both instruments (geometric mean of the FIDs) {best} {both(records[best]):.2f}")


def both(record: dict[str, float]) -> float:
    """One number for two instruments of different scales: the geometric mean of the CNN's and the MLP's FID,
    so a variant cannot win by pleasing one classifier (one image repeated 10,000 times scores well on the CNN)."""
    return float(np.sqrt(record["cnn"]["mean"] * record["mlp"]["mean"]))


def variants_markdown(switches: dict[str, dict], records: dict[str, dict[str, float]], protocol: FidProtocol) -> str:
    lines = [f"Generative XGBoost, one trained model, generation switches varied; FID mean ± std over "
             f"{protocol.sets} sets of {protocol.n_images:,} (CNN and MLP instruments), five-rate and sharpness "
             f"from the same pass.", "",
             "| variant | switches | FID | FID, MLP | both (√(FID · FID, MLP)) | five-rate | sharpness |",
             "| --- | --- | --- | --- | ---: | ---: | ---: |"]
    for name, r in records.items():
        spelled = ", ".join(f"{key} {value}" for key, value in switches[name].items())
        lines.append(f"| `{name}` | {spelled} | {r['cnn']['mean']:.2f} ± {r['cnn']['std']:.2f} | {r['mlp']['mean']:.2f} ± "
                     f"{r['mlp']['std']:.2f} | {both(r):.2f} | {r['class_rate']:.3f} | {r['sharpness']:.3f} |")
    lines += ["", f"Both: the geometric mean of the two FIDs, one number across two scales. Grids: `{GRIDS}/<variant>.png`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
