"""Stage `figures@<set>`: SarNET VAE's creative and explainable side on one model and dataset
(thesis §4.3 inpainting, §5.1 patch importance, §5.2 latent interpolation).

Usage: python pipeline/figures.py <set>   (a key of params.yaml's `figures` section)
Writes metrics/figures/<set>_{inpainting,importance,interpolation}.png and logs them to MLflow.
"""

import numpy as np
import torch
from _stage import params, run_name, stage, write_timing

from sarnet.core.data import load_prepared, to_unit_tensor
from sarnet.core.device import default_device
from sarnet.core.errors import ConfigError
from sarnet.core.files import save_grid, save_rgb_grid, write_json
from sarnet.core.model_files import SUFFIX
from sarnet.core.params import check_keys
from sarnet.explain import importance_figure, inpainting_rows, interpolation_row
from sarnet.families import load_model
from sarnet.tracking import stage_run


def _test_images(images: np.ndarray, index: list[int], what: str) -> torch.Tensor:
    if any(not 0 <= i < len(images) for i in index):
        raise ConfigError(f"figures: {what} indices must be in 0..{len(images) - 1}, got {index}")
    return to_unit_tensor(images[index])


def _interpolation_pairs(p: dict, labels: np.ndarray) -> list[list[int]]:
    """Test-image index pairs: given (`interpolate_pairs`) or the first test image of each class of
    `interpolate_labels` (the all-digit model's 4 -> 5 and 3 -> 4 grids)."""
    if "interpolate_labels" not in p:
        return [list(pair) for pair in p["interpolate_pairs"]]
    pairs = []
    for pair in p["interpolate_labels"]:
        found = [np.flatnonzero(labels == label) for label in pair]
        if any(len(f) == 0 for f in found):
            raise ConfigError(f"figures: interpolate_labels {pair}: no test image of that class in this set")
        pairs.append([int(f[0]) for f in found])
    return pairs


FIGURE_KEYS = {"model", "dataset", "digit", "seed", "inpaint_index", "importance_index", "targets", "k", "steps"}
INPAINT_KEYS = ("keep_patches", "n_styles", "z_scale", "threshold")


@stage
def main(figure_set: str) -> None:
    sets = params("figures")
    if figure_set not in sets:
        raise ConfigError(f"params.yaml: no figure set {figure_set!r} under `figures` (have: {', '.join(sets)})")
    p = sets[figure_set]
    check_keys(f"figures.{figure_set}", p, FIGURE_KEYS | {"interpolate_pairs", "interpolate_labels"}, required=FIGURE_KEYS)
    sampling = params("sampling")
    inpaint, threshold = sampling["inpaint"], sampling["sarnet_vae"]["threshold"]
    check_keys("sampling.inpaint", inpaint, INPAINT_KEYS, required=True)
    model = load_model(f"models/sarnet_vae/{p['model']}{SUFFIX}", default_device(), kind="sarnet_vae")
    latent = model.latent_dim
    test = load_prepared(f"data/prepared/{p['dataset']}.npz", digit=p.get("digit")).test
    out = {name: f"metrics/figures/{figure_set}_{name}.png" for name in ("inpainting", "importance", "interpolation")}

    with stage_run(run_name(f"figures@{figure_set}"), params=p | {"sampling": {"inpaint": inpaint, "threshold": threshold}},
                   dataset=p["dataset"], tags={"model": "sarnet_vae", "latent_dim": latent}) as tracker:
        # (a) each row: a test image, its kept top part, then completions in n_styles styles
        rows = inpainting_rows(model, _test_images(test.images, p["inpaint_index"], "inpaint"),
                               torch.Generator().manual_seed(p["seed"]), **inpaint)
        save_grid(rows.flatten(0, 1), out["inpainting"], nrow=rows.shape[1])

        # (b) each row: one test image; each column: a target patch (white) and its top-k input patches
        panels = [importance_figure(model, image, p["targets"], k=p["k"])[1]
                  for image in _test_images(test.images, p["importance_index"], "importance")]
        save_rgb_grid(np.concatenate(panels), out["importance"], nrow=len(p["targets"]))

        # (c) each row: image A, the decoded line between the two codes, image B
        index_pairs = _interpolation_pairs(p, test.labels)
        pairs = [interpolation_row(model, *_test_images(test.images, pair, "interpolate"), p["steps"],
                                   threshold=threshold) for pair in index_pairs]
        save_grid(torch.cat(pairs), out["interpolation"], nrow=p["steps"] + 2)

        labels = {"interpolate_pairs": index_pairs,
                  "interpolate_labels": [[int(test.labels[i]) for i in pair] for pair in index_pairs]}
        write_json(f"metrics/figures/{figure_set}.json", labels)  # which images the figures show, not a metric
        write_timing(f"figures/{figure_set}")
        for path in out.values():
            tracker.log_artifact(path, "figures")
        print(f"figures@{figure_set}: " + ", ".join(out.values()))


if __name__ == "__main__":
    main()
