"""Stage `fid_table`: every evaluation gathered into Table 4.1's layout (Markdown), the per-set CSV,
FID-vs-latent plot data and PNG, a JSON summary for `dvc metrics show`, §4.1's ablation tables of the
simple SarNET (metrics/sarnet_ablation.md, with the training stages' test errors), and the wall times
of the stages behind the table (metrics/wall_time.json, from metrics/timing/) with the baselines' budgets
(metrics/budgets.md, flagged at 1.5×)."""

import json
import sys
from pathlib import Path

from _stage import PARAMS_FILE, TIMING_DIR, params, run_name, stage, write_timing

from sarnet.core.files import write_json, write_text
from sarnet.core.model_files import THESIS_KINDS, variant_of
from sarnet.core.params import check_keys, read_params_file, resolve_models
from sarnet.report import (FidRow, ablation_markdown, agreement_markdown, budget_markdown, describe_variant,
                           fid_table_markdown, plot_fid_overview, plot_fid_vs_latent, scores_markdown, write_latent_csv, write_sets_csv)
from sarnet.tracking import stage_run

OUT = Path("metrics")


def _models() -> dict[str, dict]:
    """The `models` table, every entry with its base's settings."""
    return resolve_models(read_params_file(PARAMS_FILE, hint="run stages from the project root"))


def _evaluated() -> list[tuple[str, str, int | None, str | None, str, bool]]:
    """Every generator the pipeline evaluates, in table order (Table 4.1's rows, the thesis's single models,
    their variants, the seeds' models; each group in params.yaml's order):
    (name, kind, latent size, variant, dataset it is scored on, whether it is one of the seeds' models)."""
    entries = [*_models().items(), ("gen_xgboost", params("gen_xgboost") | {"kind": "gen_xgboost"})]
    rows = []
    for name, entry in entries:
        kind, latent = entry["kind"], entry.get("latent_dim")
        baseline = kind not in THESIS_KINDS
        variant = None if baseline else variant_of(name, kind, latent)
        rows.append((name, kind, latent, variant, entry["dataset"], baseline))
    group = lambda row: 3 if row[5] else 2 if row[3] is not None else 1 if row[2] is None else 0  # noqa: E731
    return sorted(rows, key=group)  # stable: params.yaml's order within a group


def _table_latents(evaluated: list[tuple[str, str, int | None, str | None, str, bool]]) -> list[int]:
    """Table 4.1's latent sizes: those of the thesis's VAEs themselves, in params.yaml's order."""
    return list(dict.fromkeys(latent for _, _, latent, variant, _, baseline in evaluated
                              if latent is not None and variant is None and not baseline))


def _stage_seconds(evaluated: set[str]) -> tuple[dict[str, float], dict[str, float]]:
    """Recorded wall time of the stages behind this table (metrics/timing/**/*.json, key `seconds`), and
    the same in GEMM units (seconds / the stage's own GEMM-1024 time, where it recorded one: comparable
    across machines, docs/staleness.md). A generator's training and evaluation count only when its
    evaluation is in the table, so the total of a partial run does not include models it never scored."""
    seconds, units = {}, {}
    for path in sorted(TIMING_DIR.rglob("*.json")):
        key = str(path.relative_to(TIMING_DIR).with_suffix(""))
        generator = key.split("/", 1)[1] if key.startswith(("train/", "fid/")) else key if key == "gen_xgboost" else None
        if generator is not None and generator not in evaluated:
            continue
        timing = json.loads(path.read_text())
        value = timing.get("seconds")
        if isinstance(value, (int, float)):
            seconds[key] = value
            gemm_ms = (timing.get("run") or {}).get("gemm1024_ms")
            if isinstance(gemm_ms, (int, float)) and gemm_ms > 0:
                units[key] = round(value * 1000 / gemm_ms)
    return seconds, units


@stage
def main() -> None:
    p = params("fid_table")
    check_keys("fid_table", p, ("thesis", "calibration_row", "thesis_ablation", "budget_minutes"), required=True)
    protocol = params("evaluate")
    evaluated = _evaluated()
    latent_dims = _table_latents(evaluated)
    rows, records, missing = [], {}, []
    for name, kind, latent, variant, dataset, baseline in evaluated:
        record, sets = OUT / "fid" / f"{name}.json", OUT / "fid" / "sets" / f"{name}.json"
        if not (record.exists() and sets.exists()):
            missing.append(name)
            continue
        records[name] = json.loads(record.read_text())
        rows.append(FidRow.from_files(name, kind, latent, records[name], json.loads(sets.read_text()), variant, dataset,
                                      baseline))
    if missing:  # a partial run still gets its table; the gaps read "not run"
        print(f"warning: not evaluated: {', '.join(missing)}", file=sys.stderr)
    calibration_file = json.loads((OUT / "calibration.json").read_text())
    calibration = calibration_file["rows"][p["calibration_row"]]
    thesis = p["thesis"]

    models = _models()
    sarnet_variants = {name: variant for name, kind, _, variant, _, _ in evaluated if kind == "sarnet" and variant}
    variants = {variant: models[name] for name, variant in sarnet_variants.items()}  # §4.1's ablations, by variant
    labels = {name: f"{describe_variant(models[name])}, {models[name]['epochs']} epochs" for name in sarnet_variants}
    seconds, gemm_units = _stage_seconds({r.name for r in rows})
    budgets = p["budget_minutes"]
    spent = {name: seconds[f"train/{name}"] + seconds[f"fid/{name}"] for name in budgets
             if f"train/{name}" in seconds and f"fid/{name}" in seconds}
    table = fid_table_markdown(rows, latent_dims, thesis, (calibration["cnn"]["fid"], calibration["thesis_fid"]), protocol["n_images"],
                               labels) + "\n" + agreement_markdown(rows, latent_dims) + "\n" + scores_markdown(
        rows, records, calibration_file.get("references"))
    write_text(OUT / "fid_table.md", table)
    write_text(OUT / "budgets.md", budget_markdown(budgets, spent))  # wall times: apart from the reproducible table
    trained = {variant: json.loads(path.read_text()) for name, variant in sarnet_variants.items()
               if (path := OUT / "train" / f"{name}.json").exists()}
    write_text(OUT / "sarnet_ablation.md", ablation_markdown(
        variants, trained, {r.variant: r for r in rows if r.kind == "sarnet" and r.variant}, p["thesis_ablation"]))
    write_sets_csv(rows, OUT / "fid_sets.csv")
    write_latent_csv(rows, latent_dims, thesis, OUT / "fid_vs_latent.csv")
    plot_fid_vs_latent(rows, latent_dims, thesis, OUT / "fid_vs_latent.png")
    plot_fid_overview(rows, thesis, OUT / "fid_overview.png")
    write_json(OUT / "fid.json", {r.name: {i: dict(zip(("mean", "std"), r.by(i))) for i in ("cnn", "mlp") if r.by(i)}
                                  | {"sets": r.sets} for r in rows})
    write_json(OUT / "wall_time.json", {"stages": seconds, "total_seconds": round(sum(seconds.values()), 1),
                                        "total_hours": round(sum(seconds.values()) / 3600, 3),
                                        "gemm_units": gemm_units, "total_gemm_units": sum(gemm_units.values()),
                                        "stages_without_gemm_time": sorted(set(seconds) - set(gemm_units))})

    with stage_run(run_name("fid_table"), params=p) as tracker:
        tracker.log_metrics({f"fid_{i}_{stat}.{r.name}": value for r in rows for i in ("cnn", "mlp") if r.by(i)
                             for stat, value in zip(("mean", "std"), r.by(i))})
        for name in ("fid_table.md", "sarnet_ablation.md", "budgets.md", "fid_sets.csv", "fid_vs_latent.png",
                     "fid_overview.png", "wall_time.json"):
            tracker.log_artifact(OUT / name)
    write_timing("fid_table")  # its own seconds and provenance; not in wall_time.json, written before it
    print(table)


if __name__ == "__main__":
    main()
