"""The FID table in the layout of the thesis's Table 4.1, its per-set CSV, the FID-vs-latent plot and the
overview of every model, and the tables of §4.1's simple-SarNET ablations (loss, patch size)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sarnet.core.files import atomic_path, write_text

FAMILIES = {"sarnet_vae": "SarNET VAE", "conv_vae": "conv VAE"}
SINGLE_MODELS = {"sarnet": "simple SarNET", "gen_xgboost": "generative XGBoost"}
BASELINE_KINDS = {"gan_mlp": "vanilla GAN (MLP)", "dcgan": "DCGAN", "beta_vae": "β-VAE", "pixelcnn": "PixelCNN",
                  "vqvae": "VQ-VAE + PixelCNN prior", "pixelrnn_row": "PixelRNN (Row LSTM)"}
BUDGET_FLAG = 1.5  # a baseline whose stages took more than this × its budget is flagged


@dataclass(frozen=True)
class FidRow:
    """One model's evaluation: its FID record (metrics/fid/<name>.json) and every instrument's per-set FIDs
    (metrics/fid/sets/<name>.json, by instrument name: `cnn`, `mlp`) on the same sets."""

    name: str
    kind: str
    latent_dim: int | None
    fids: Mapping[str, Sequence[float]]  # instrument -> its per-set FIDs
    mean: float  # the CNN instrument's, as the record has it
    std: float
    variant: str | None = None  # what the name adds to its kind (`fashion`, `mse`); None: the thesis's model itself
    dataset: str = "mnist"
    baseline: bool = False  # one of the seeds' other generators

    @classmethod
    def from_files(cls, name: str, kind: str, latent_dim: int | None, record: Mapping,
                   fids: Sequence[float] | Mapping[str, Sequence[float]], variant: str | None = None,
                   dataset: str = "mnist", baseline: bool = False) -> "FidRow":
        """From an evaluation's record and its per-set FIDs ({"cnn": …, "mlp": …}, or the CNN's alone),
        which must agree in number."""
        by_instrument = {i: [float(f) for f in v] for i, v in (fids if isinstance(fids, Mapping) else {"cnn": fids}).items()}
        if any(len(v) != record["sets"] for v in by_instrument.values()):
            raise ValueError(f"{name}: {', '.join(f'{len(v)} {i}' for i, v in by_instrument.items())} per-set FIDs "
                             f"for {record['sets']} sets")
        cnn = record_fid(record, "cnn")
        return cls(name, kind, latent_dim, by_instrument, cnn[0], cnn[1], variant, dataset, baseline)

    @property
    def sets(self) -> int:
        return len(self.fids["cnn"])

    def by(self, instrument: str) -> tuple[float, float] | None:
        """(mean, std) over sets by an instrument (the CNN's from the record, the others' from their per-set
        FIDs); None when that one did not score it."""
        if instrument == "cnn":
            return self.mean, self.std
        values = self.fids.get(instrument)
        if not values:
            return None
        mean = sum(values) / len(values)
        return mean, (sum((f - mean) ** 2 for f in values) / len(values)) ** 0.5


def record_fid(record: Mapping, instrument: str) -> tuple[float, float]:
    """(mean, std) of an instrument in an evaluation's record, `{"cnn": {"mean": …, "std": …}, …}`. Records
    written before the instruments were keyed by name (issue 30; gone with the next full refresh) had the
    CNN's as `mean`, `std` and the MLP's as `mlp_mean`, `mlp_std`."""
    if instrument in record:
        return float(record[instrument]["mean"]), float(record[instrument]["std"])
    prefix = "" if instrument == "cnn" else f"{instrument}_"
    return float(record[f"{prefix}mean"]), float(record[f"{prefix}std"])


def _ours(row: FidRow | None) -> str:
    if row is None:
        return "not run"
    return f"{row.mean:.3f} ± {row.std:.3f} ({row.sets})"


def _mlp(row: FidRow | None) -> str:
    value = None if row is None else row.by("mlp")
    return "—" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"


def _thesis(value) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def describe_variant(settings: Mapping) -> str:
    """A simple SarNET's settings in words: `L1 + SSIM, patch 4`, `4 classes, patch 4`, `binary target + SSIM, patch 4`."""
    classes, power = int(settings["classes"]), float(settings["loss_power"])
    if classes >= 2:
        output = f"{classes} classes"
    else:
        output = "binary target" if classes == 1 else {1.0: "L1", 2.0: "MSE"}.get(power, f"|x−y|^{power:g}")
        output += " + SSIM" if settings["ssim"] else ""
    return f"{output}, patch {settings['patch']}"


def fid_table_markdown(rows: Sequence[FidRow], latent_dims: Sequence[int], thesis: Mapping,
                       calibration: tuple[float, float], n_images: int,
                       variant_labels: Mapping[str, str] | None = None) -> str:
    """Table 4.1's layout (latent size × family), ours beside the thesis's, then the single models and
    the variants (`variant_labels`: a row's name -> its settings in words, for variants of a single model).

    `calibration` is (our FID, thesis FID) of the blur σ = 0.5 set: the two classifiers' scales
    differ, and that row is how a reader converts between them.
    """
    by_key = {(r.kind, r.latent_dim): r for r in rows if r.variant is None and not r.baseline}
    ours_blur, thesis_blur = calibration
    lines = [
        f"FID, mean ± std over sets (number of sets); each set {n_images:,} generated vs {n_images:,} real "
        "test images drawn with replacement.",
        "",
        "Ours by two instruments: the CNN of the calibration below (sets), and an MLP on raw pixels (the same sets).",
        "",
        "| L | SarNET VAE (ours) | SarNET VAE (ours, MLP) | SarNET VAE (thesis) | conv VAE (ours) | conv VAE (ours, MLP) | conv VAE (thesis) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for latent in latent_dims:
        cells = [str(latent)]
        for family in FAMILIES:
            row = by_key.get((family, latent))
            cells += [_ours(row), _mlp(row), _thesis((thesis.get(family) or {}).get(latent))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| model | ours | ours, MLP | thesis |", "| --- | --- | --- | --- |"]
    for kind, label in SINGLE_MODELS.items():
        if (kind, None) in by_key or thesis.get(kind) is not None:
            row = by_key.get((kind, None))
            lines.append(f"| {label} | {_ours(row)} | {_mlp(row)} | {_thesis(thesis.get(kind))} |")
    for row in (r for r in rows if r.variant is not None):
        published = (thesis.get("variants") or {}).get(row.name)
        if row.kind in SINGLE_MODELS:
            label = f"{SINGLE_MODELS[row.kind]} `{row.variant}`: {(variant_labels or {}).get(row.name, 'variant')}"
        else:
            label = (f"{FAMILIES.get(row.kind, row.kind)} L = {row.latent_dim}, training set `{row.variant}` "
                     f"(scored on {row.dataset} test images by the {row.dataset} classifier)")
        lines.append(f"| {label} | {_ours(row)} | {_mlp(row)} | {_thesis(published)} |")
    for row in (r for r in rows if r.baseline):
        latent = "" if row.latent_dim is None else f", L = {row.latent_dim}"
        lines.append(f"| `{row.name}`: {BASELINE_KINDS.get(row.kind, row.kind)}{latent} (seeds' baseline) | "
                     f"{_ours(row)} | {_mlp(row)} | — |")
    lines += [
        "",
        f"Scale: blur σ = 0.5 of real test fives scores {ours_blur:.3f} with our classifier and "
        f"{thesis_blur:.3f} with the thesis's ({ours_blur / thesis_blur:.2f}×); see metrics/calibration.md.",
        "",
    ]
    return "\n".join(lines)


def write_sets_csv(rows: Sequence[FidRow], path: str | os.PathLike) -> None:
    """One line per (model, set): the raw numbers behind every mean and std."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "set", "fid", "fid_mlp"])
    for row in rows:
        mlp = list(row.fids.get("mlp", ())) or [None] * row.sets
        writer.writerows([row.name, i, f"{fid:.6f}", "" if other is None else f"{other:.6f}"]
                         for i, (fid, other) in enumerate(zip(row.fids["cnn"], mlp)))
    write_text(path, buffer.getvalue())


def write_latent_csv(rows: Sequence[FidRow], latent_dims: Sequence[int], thesis: Mapping, path: str | os.PathLike) -> None:
    """FID against latent size for both families (a DVC plot), ours and the thesis's."""
    by_key = {(r.kind, r.latent_dim): r for r in rows if r.variant is None}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["latent_dim", *(f"{f}_{col}" for f in FAMILIES for col in ("mean", "std", "thesis"))])
    for latent in sorted(latent_dims):
        cells: list = [latent]
        for family in FAMILIES:
            row = by_key.get((family, latent))
            published = (thesis.get(family) or {}).get(latent)
            cells += ["" if row is None else f"{row.mean:.6f}", "" if row is None else f"{row.std:.6f}",
                      "" if published is None else published[0]]
        writer.writerow(cells)
    write_text(path, buffer.getvalue())


def plot_fid_vs_latent(rows: Sequence[FidRow], latent_dims: Sequence[int], thesis: Mapping, path: str | os.PathLike) -> None:
    """PNG: ours (error bars = std over sets, left axis) and the thesis's (right axis: another classifier's scale)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI
    import matplotlib.pyplot as plt

    by_key = {(r.kind, r.latent_dim): r for r in rows if r.variant is None}
    fig, ours_ax = plt.subplots(figsize=(6, 4), dpi=120)
    thesis_ax = ours_ax.twinx()
    for (family, label), colour in zip(FAMILIES.items(), ("tab:blue", "tab:orange")):
        points = [(L, by_key[(family, L)]) for L in sorted(latent_dims) if (family, L) in by_key]
        if points:
            ours_ax.errorbar([L for L, _ in points], [r.mean for _, r in points], yerr=[r.std for _, r in points],
                             marker="o", capsize=3, color=colour, label=f"{label} (ours)")
        published = sorted((L, v[0]) for L, v in (thesis.get(family) or {}).items() if L in latent_dims)
        if published:
            thesis_ax.plot(*zip(*published), linestyle="--", marker="x", color=colour, alpha=0.6, label=f"{label} (thesis)")
    ours_ax.set_xscale("log", base=2)
    ours_ax.set_xticks(sorted(latent_dims), [str(L) for L in sorted(latent_dims)])
    ours_ax.set_xlabel("latent size L")
    ours_ax.set_ylabel("FID, our classifier")
    thesis_ax.set_ylabel("FID, thesis's classifier")
    handles = [h for ax in (ours_ax, thesis_ax) for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in (ours_ax, thesis_ax) for lab in ax.get_legend_handles_labels()[1]]
    ours_ax.legend(handles, labels, fontsize=8)
    ours_ax.set_title("FID against latent size (lower is better)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# Colours of the overview by family (a kind's family: families/ modules); the thesis's own models first.
OVERVIEW_FAMILIES = {"sarnet_vae": ("SarNET VAE", "tab:blue"), "conv_vae": ("conv VAE", "tab:orange"),
                     "beta_vae": ("conv VAE", "tab:orange"), "sarnet": ("simple SarNET", "tab:cyan"),
                     "gen_xgboost": ("generative XGBoost", "tab:olive"), "gan_mlp": ("GANs", "tab:red"),
                     "dcgan": ("GANs", "tab:red"), "pixelcnn": ("pixel models", "tab:purple"),
                     "pixelrnn_row": ("pixel models", "tab:purple"), "vqvae": ("VQ-VAE", "tab:green")}


@dataclass(frozen=True)
class OverviewPoint:
    """One bar pair of the overview: a model's FID by each instrument, and the thesis's where it has one."""

    name: str
    family: str
    cnn: tuple[float, float]
    mlp: tuple[float, float] | None
    thesis: float | None


def thesis_fid(row: FidRow, thesis: Mapping) -> float | None:
    """The thesis's FID of the model a row is (its Table 4.1 cell, single model or variant), as the table finds it."""
    if row.baseline:
        return None
    if row.variant is not None:
        value = (thesis.get("variants") or {}).get(row.name)
    elif row.latent_dim is not None:
        value = (thesis.get(row.kind) or {}).get(row.latent_dim)
    else:
        value = thesis.get(row.kind)
    return None if value is None else float(value[0])


def overview_points(rows: Sequence[FidRow], thesis: Mapping) -> list[OverviewPoint]:
    """Every row of the table, in its order, with its family's name and both instruments' (mean, std)."""
    return [OverviewPoint(r.name, OVERVIEW_FAMILIES.get(r.kind, (r.kind, "tab:gray"))[0], r.by("cnn"), r.by("mlp"),
                          thesis_fid(r, thesis)) for r in rows]


def plot_fid_overview(rows: Sequence[FidRow], thesis: Mapping, path: str | os.PathLike) -> list[OverviewPoint]:
    """PNG of the whole comparison: a horizontal bar pair per model (CNN filled, MLP hatched; error bars the std
    over sets) on a log axis, bars coloured by family, the thesis's value (its own classifier's scale) as a
    black mark. Returns what it drew."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    points = overview_points(rows, thesis)
    colour = {label: c for label, c in OVERVIEW_FAMILIES.values()}
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(points) + 1.6), dpi=110)
    height = 0.38
    for i, point in enumerate(points):
        c = colour.get(point.family, "tab:gray")
        ax.barh(i - height / 2, point.cnn[0], height, xerr=point.cnn[1], color=c, capsize=2)
        if point.mlp is not None:
            ax.barh(i + height / 2, point.mlp[0], height, xerr=point.mlp[1], color=c, alpha=0.45, hatch="///",
                    capsize=2)
        if point.thesis is not None:
            ax.plot(point.thesis, i, marker="D", color="black", markersize=4)
    ax.set_yticks(range(len(points)), [p.name for p in points], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("FID, mean ± std over sets (log scale; lower is better)")
    handles = [Patch(color=colour[f], label=f) for f in dict.fromkeys(p.family for p in points) if f in colour]
    handles += [Patch(facecolor="white", edgecolor="black", label="CNN instrument (solid)"),
                Patch(facecolor="white", edgecolor="black", hatch="///", label="MLP instrument (hatched)"),
                plt.Line2D([], [], marker="D", color="black", linestyle="", label="thesis (its own classifier)")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never on them
    ax.set_title("Every model's FID by both instruments")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return points


def _fid_cell(row: FidRow | None) -> str:
    return "not run" if row is None else f"{row.mean:.3f} ± {row.std:.3f}"


def _error(train: Mapping | None, key: str) -> str:
    return "not run" if train is None else f"{train[key]:.4f}"


def ablation_markdown(settings: Mapping[str, Mapping], train: Mapping[str, Mapping], fids: Mapping[str, FidRow],
                      thesis: Mapping[str, float]) -> str:
    """§4.1's two ablations of the simple SarNET as Markdown, each with its verdict against the thesis.

    `settings`: each variant's full settings (its `models` entry over the `sarnet` base), by variant; `train`: its training metrics (test_mse, test_l1, final_test_loss) where it ran; `fids`: its FID
    row; `thesis`: the thesis's test error by variant (MSE for loss_power 2, L1 for loss_power 1).
    Loss table: the variants `thesis` names. Patch table: every L1 + SSIM regression variant, by patch.
    """
    lines = ["Simple SarNET, thesis §4.1. Errors are per pixel on the test fives, each patch predicted from "
             "the real patches before it (teacher forcing, outputs clipped to [0, 1]); FID as in the FID table. "
             f"Epochs: {', '.join(sorted({str(settings[k]['epochs']) for k in settings}))}.", "",
             "**Loss.** \"Using SSIM with MSE improved MSE from 0.0354 to 0.0256, and when used with L1 loss, it "
             "improved L1 from 0.0902 to 0.0647.\"", "",
             "| variant | loss | test MSE | test L1 | thesis | FID |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    metric = {1.0: ("L1", "test_l1"), 2.0: ("MSE", "test_mse")}
    for key in thesis:
        if key not in settings:
            continue
        name, _ = metric.get(float(settings[key]["loss_power"]), ("?", None))
        lines.append(f"| `{key}` | {describe_variant(settings[key]).split(', patch')[0]} | "
                     f"{_error(train.get(key), 'test_mse')} | {_error(train.get(key), 'test_l1')} | "
                     f"{name} {thesis[key]:.4f} | {_fid_cell(fids.get(key))} |")
    lines.append("")
    for power, (name, field) in metric.items():
        pair = {bool(settings[k]["ssim"]): k for k in thesis if k in settings
                and float(settings[k]["loss_power"]) == power and int(settings[k]["classes"]) == 0}
        if len(pair) < 2:
            continue
        without, with_ssim = pair[False], pair[True]
        if without not in train or with_ssim not in train:
            lines.append(f"- {name}: not run.")
            continue
        ours = (train[without][field], train[with_ssim][field])
        helps = ours[1] < ours[0]
        verdict = "as the thesis reports" if helps == (thesis[with_ssim] < thesis[without]) else "unlike the thesis"
        lines.append(f"- {name}: adding SSIM {'lowers' if helps else 'raises'} our test {name} from {ours[0]:.4f} to "
                     f"{ours[1]:.4f} (thesis {thesis[without]:.4f} → {thesis[with_ssim]:.4f}): {verdict}.")
    patch_rows = sorted((int(v["patch"]), k) for k, v in settings.items()
                        if int(v["classes"]) == 0 and v["ssim"] and float(v["loss_power"]) == 1.0)
    lines += ["", "**Patch size** (L1 + SSIM). \"With small patches of size 2x2, the MSE or L1 loss can be reduced "
              "even further … the quality of the generated images was worse.\"", "",
              "| variant | patch | patch grid | final test loss | test L1 | test MSE | FID |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for patch, key in patch_rows:
        grid = 28 // patch
        lines.append(f"| `{key}` | {patch}×{patch} | {grid}×{grid} | {_error(train.get(key), 'final_test_loss')} | "
                     f"{_error(train.get(key), 'test_l1')} | {_error(train.get(key), 'test_mse')} | "
                     f"{_fid_cell(fids.get(key))} |")
    done = [(patch, key) for patch, key in patch_rows if key in train and key in fids]
    if len(done) >= 2:
        (small, small_key), others = done[0], done[1:]
        claims = [(train[small_key]["final_test_loss"] < train[k]["final_test_loss"], fids[small_key].mean > fids[k].mean, p)
                  for p, k in others]
        holds = all(lower and worse for lower, worse, _ in claims)
        details = "; ".join(f"vs patch {p}: loss {'lower' if lower else 'not lower'}, FID {'worse' if worse else 'not worse'}"
                            for lower, worse, p in claims)
        lines += ["", f"- Patch {small}: {details}. The thesis's \"lower loss, worse images\" "
                      f"{'holds' if holds else 'does not hold'} here."]
    return "\n".join(lines) + "\n"


def budget_markdown(budgets: Mapping[str, float], seconds: Mapping[str, float]) -> str:
    """The baselines' stage time (training + evaluation, `seconds` by name) against their budgets in
    minutes; over BUDGET_FLAG × budget is flagged. A baseline without recorded time reads "not run"."""
    if not budgets:
        return ""
    lines = [f"Budgets (training + FID sets, this run's machine); flagged over {BUDGET_FLAG:g}× the budget:", ""]
    for name, budget in budgets.items():
        if name not in seconds:
            lines.append(f"- `{name}`: not run (budget {budget:g} min)")
            continue
        minutes = seconds[name] / 60
        flag = f" — **over {BUDGET_FLAG:g}× its budget**" if minutes > BUDGET_FLAG * budget else ""
        lines.append(f"- `{name}`: {minutes:.1f} min of {budget:g}{flag}")
    return "\n".join(lines) + "\n"


def _number(record: Mapping, key: str, digits: int) -> str:
    value = record.get(key)
    return "—" if value is None else f"{value:.{digits}f}"


def scores_markdown(rows: Sequence[FidRow], records: Mapping[str, Mapping], references: Mapping | None) -> str:
    """The numbers each evaluation reads from the FID's own classifier pass (metrics/fid/<name>.json),
    one line per model under the real images' values (the `calibrate` stage's references)."""
    lines = [
        "From the same classifier pass as each FID: inception score (IS, mean ± std over sets), five-rate (share "
        "classed as a five; the trained class for other digits), sharpness exp(−E H(p(y|x))), and on set 0's first "
        "1,000 images the spread of the logits against real images' (well below 1: collapse) and the mean pixel "
        "distance to the nearest training image (well below the real test images': memorisation). IS is not a "
        "ranking for a fives-only table: a generator of perfect fives scores about 1, as the real fives do, and "
        "one that drifts towards other digits scores higher; it is meant for the all-digit model.",
        "",
        "| model | IS | five-rate | sharpness | logit spread / real | nearest training image |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    if references:
        real, digits = references["class"], references["all_digits"]
        lines.append(f"| real test fives | {real['is_mean']:.3f} ± {real['is_std']:.3f} | {real['class_rate']:.3f} | "
                     f"{real['sharpness']:.3f} | 1 | {real['nearest_train_distance']:.2f} |")
        lines.append(f"| real test images, all digits | {digits['is_mean']:.3f} ± {digits['is_std']:.3f} | — | "
                     f"{digits['sharpness']:.3f} | — | — |")
    for row in rows:
        r = records.get(row.name, {})
        if "is_mean" not in r:
            continue
        rate = r.get("five_rate", r.get("class_rate"))
        lines.append(f"| {row.name} | {r['is_mean']:.3f} ± {r['is_std']:.3f} | {'—' if rate is None else f'{rate:.3f}'} | "
                     f"{_number(r, 'sharpness', 3)} | {_number(r, 'logit_spread_ratio', 2)} | "
                     f"{_number(r, 'nearest_train_distance', 2)} |")
    return "\n".join(lines) + "\n"


# --- what holds on both instruments (issue 20) ------------------------------------------------------

def separation(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Which of two (mean, std) FIDs is better (lower) beyond their set-to-set std: "a", "b" or "tie"
    (the gap is not larger than the two stds together)."""
    gap = b[0] - a[0]
    if abs(gap) <= a[1] + b[1]:
        return "tie"
    return "a" if gap > 0 else "b"


def agreement(a: FidRow, b: FidRow) -> tuple[str, str, str]:
    """(CNN's separation, MLP's separation, verdict) of comparing a with b."""
    cnn, mlp = separation(a.by("cnn"), b.by("cnn")), separation(a.by("mlp"), b.by("mlp"))
    if cnn == mlp:
        verdict = "within noise on both" if cnn == "tie" else "holds on both"
    elif "tie" in (cnn, mlp):
        verdict = f"only the {'CNN' if mlp == 'tie' else 'MLP'} separates them"
    else:
        verdict = "the instruments disagree"
    return cnn, mlp, verdict


def _order(rows: Sequence[FidRow], instrument: str) -> list[int]:
    return [r.latent_dim for r in sorted(rows, key=lambda r: r.by(instrument)[0])]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def agreement_markdown(rows: Sequence[FidRow], latent_dims: Sequence[int]) -> str:
    """Which of the report's comparisons hold whatever instrument scores them: SarNET VAE against the
    conv VAE at each L, the order across L within each family, each baseline against SarNET VAE L = 128
    (the thesis's main model), and the rank correlation of all rows between the instruments."""
    scored = [r for r in rows if r.by("mlp") is not None]
    by_key = {(r.kind, r.latent_dim): r for r in scored if r.variant is None and not r.baseline}
    lines = ["**What holds on both instruments.** A comparison is decided by an instrument when the FIDs differ by "
             "more than their two set-to-set stds together; it holds when both instruments decide it the same way.", ""]

    def line(label: str, a: FidRow, b: FidRow, names: tuple[str, str]) -> str:
        cnn, mlp, verdict = agreement(a, b)
        said = {"a": f"{names[0]} better", "b": f"{names[1]} better", "tie": "within noise"}
        return (f"- {label}: CNN {a.mean:.2f} vs {b.mean:.2f} ({said[cnn]}), MLP {a.by('mlp')[0]:.2f} vs "
                f"{b.by('mlp')[0]:.2f} ({said[mlp]}): **{verdict}**.")

    for latent in latent_dims:
        a, b = by_key.get(("sarnet_vae", latent)), by_key.get(("conv_vae", latent))
        if a and b:
            lines.append(line(f"SarNET VAE vs conv VAE, L = {latent}", a, b, ("SarNET VAE", "conv VAE")))
    for family, label in FAMILIES.items():
        family_rows = [by_key[(family, L)] for L in latent_dims if (family, L) in by_key]
        if len(family_rows) >= 2:
            cnn_order, mlp_order = _order(family_rows, "cnn"), _order(family_rows, "mlp")
            rho = spearman([r.by("cnn")[0] for r in family_rows], [r.by("mlp")[0] for r in family_rows])
            lines.append(f"- {label} across L, best first: CNN {' < '.join(map(str, cnn_order))}, MLP "
                         f"{' < '.join(map(str, mlp_order))}: **{'the same order' if cnn_order == mlp_order else 'different orders'}** "
                         f"(Spearman ρ = {rho:.2f}).")
    main = by_key.get(("sarnet_vae", max(latent_dims))) if latent_dims else None
    for row in (r for r in scored if r.baseline):
        if main is not None:
            lines.append(line(f"`{row.name}` vs SarNET VAE L = {main.latent_dim}", row, main, (row.name, "SarNET VAE")))
    if len(scored) >= 3:
        rho = spearman([r.by("cnn")[0] for r in scored], [r.by("mlp")[0] for r in scored])
        lines.append(f"- All {len(scored)} rows: Spearman rank correlation between the instruments ρ = {rho:.3f}.")
    if len(lines) == 2:
        lines.append("No comparison has been scored by both instruments yet.")
    return "\n".join(lines) + "\n"
