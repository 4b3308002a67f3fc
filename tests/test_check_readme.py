"""`.ci/check_readme.py`: the result tables of the README and docs/results.md must be the committed metrics,
and the README stays short enough to read in five minutes."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "check_readme.py"
TABLE = "FID, mean ± std over sets.\n\n| L | ours |\n| --- | --- |\n| 128 | 5.291 ± 0.239 (50) |\n\nScale: blur σ = 0.5 scores 8.011."
ABLATION = "Simple SarNET, thesis §4.1.\n\n| variant | test MSE |\n| --- | ---: |\n| `mse` | 0.0300 |\n\n- MSE: as the thesis reports."
VARIANTS = "Generative XGBoost, switches varied.\n\n| variant | FID |\n| --- | --- |\n| `bernoulli` | 80.42 ± 0.28 |\n\nGrids: g."


def project(tmp_path: Path, readme_rows: list[str], fid_table: str = TABLE, ablation_block: str = ABLATION,
            variants_block: str = VARIANTS, fid_block: str = TABLE, moved: bool = False,
            calibration_block: str | None = None) -> Path:
    """A fake tree with every generated block in README.md, or with `moved` the training, ablation and
    variants blocks in docs/results.md, as the real tree has them."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"model_bases": {"vae": {"epochs": 200}, "simple": {"epochs": 500}},
         "models": {"sarnet": {"base": "simple"}, "sarnet_vae_L128": {"base": "vae"},
                    "sarnet_vae_fashion_L128": {"base": "vae", "epochs": 20}}}))
    calibration_block = CALIBRATION if calibration_block is None else calibration_block
    for folder in ("train", "timing/train"):
        (tmp_path / "metrics" / folder).mkdir(parents=True)
    (tmp_path / "metrics" / "fid_table.md").write_text(fid_table + "\n")
    (tmp_path / "metrics" / "sarnet_ablation.md").write_text(ABLATION + "\n")
    (tmp_path / "metrics" / "gen_xgboost_variants.md").write_text(VARIANTS + "\n")
    (tmp_path / "metrics" / "calibration.md").write_text("# FID calibration (digit 5)\n\n" + CALIBRATION + "\n")
    for name, loss in (("sarnet_vae_L128", 80.4412), ("sarnet", 0.29312), ("sarnet_vae_fashion_L128", 224.63)):
        (tmp_path / "metrics" / "train" / f"{name}.json").write_text(json.dumps(
            {"final_train_loss": loss, "final_test_loss": 100.3, "best_test_loss": 92.14, "best_test_epoch": 45}))
        (tmp_path / "metrics" / "timing" / "train" / f"{name}.json").write_text(json.dumps(
            {"seconds_per_epoch": 1.434, "seconds": 309.4}))
    readme = ("# x\n<!-- fid_table:start -->\nFrom the last run.\n\n" + fid_block + "\n<!-- fid_table:table-end -->\n\n"
              "**Reading it.** prose\n<!-- fid_table:end -->\n")
    results = ("<!-- training:start -->\n| model | epochs | final | best | reference | s/epoch | stage s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
               + "\n".join(readme_rows) + "\n<!-- training:end -->\n"
               "## §4.1\n<!-- sarnet_ablation:start -->\n" + ablation_block + "\n<!-- sarnet_ablation:end -->\n"
               "## XGBoost\n<!-- gen_xgboost_variants:start -->\n" + variants_block + "\n<!-- gen_xgboost_variants:end -->\n"
               "## Calibration\n<!-- calibration:start -->\n" + calibration_block + "\n<!-- calibration:table-end -->\n"
               "Prose on the scale.\n<!-- calibration:end -->\n")
    if moved:
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "results.md").write_text("# Results\n" + results)
        (tmp_path / "README.md").write_text(readme)
    else:
        (tmp_path / "README.md").write_text(readme + results)
    return tmp_path


CALIBRATION = ("5,000 images per set.\n\n| comparison | our FID |\n| --- | ---: |\n| 1-D column blur σ = 0.5 | 8.011 |")


def test_the_calibration_block_is_metrics_calibration_below_its_title(tmp_path):
    path = project(tmp_path, ROWS, moved=True, calibration_block=CALIBRATION.replace("8.011", "8.165"))
    result = run(path)
    assert result.returncode == 1 and "docs/results.md: calibration block: differs" in result.stdout
    assert run(path, "--write").returncode == 0
    text = (path / "docs" / "results.md").read_text()
    assert "8.011" in text and "8.165" not in text and "# FID calibration" not in text
    assert "Prose on the scale." in text  # the author's words after the table stay
    assert run(path).returncode == 0


def run(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=path, capture_output=True, text=True)


ROWS = ["| sarnet_vae_L128 | 200 | 80.44 / 100.30 | 92.14 (epoch 45) | 80.7 / 105.9 | 1.43 | 309 |",
        "| sarnet (simple) | 500 | 0.293 / 100.300 | 92.140 (epoch 45) | — | 1.43 | 309 |",
        "| sarnet_vae_fashion_L128 | 20 | 224.63 / 100.30 | 92.14 (epoch 45) | — | 1.43 | 309 |"]


def test_a_readme_that_shows_the_metrics_passes(tmp_path):
    result = run(project(tmp_path, ROWS))
    assert result.returncode == 0, result.stdout
    assert "match" in result.stdout


def test_a_stale_number_or_table_fails_and_write_repairs_it_keeping_the_prose(tmp_path):
    stale = [ROWS[0].replace("80.44", "80.45"), ROWS[1], ROWS[2].replace("| 20 |", "| 25 |")]
    path = project(tmp_path, stale, fid_table=TABLE.replace("5.291", "4.000"))
    result = run(path)
    assert result.returncode == 1
    assert "sarnet_vae_L128" in result.stdout and "sarnet_vae_fashion_L128" in result.stdout
    assert "fid_table block" in result.stdout and "sarnet (simple)" not in result.stdout
    assert run(path, "--write").returncode == 0
    text = (path / "README.md").read_text()
    assert ROWS[0] in text and ROWS[2] in text and "4.000" in text and "5.291" not in text
    assert "**Reading it.** prose" in text and "80.7 / 105.9" in text
    assert run(path).returncode == 0


def test_the_ablation_block_is_filled_when_empty_and_repaired_when_stale(tmp_path):
    for block in ("", ABLATION.replace("0.0300", "0.0400")):
        (tmp_path / str(len(block))).mkdir()
        path = project(tmp_path / str(len(block)), ROWS, ablation_block=block)
        result = run(path)
        assert result.returncode == 1 and "sarnet_ablation block" in result.stdout
        assert run(path, "--write").returncode == 0
        text = (path / "README.md").read_text()
        assert ABLATION in text and "0.0400" not in text and text.count("<!-- sarnet_ablation:start -->") == 1
        assert run(path).returncode == 0


def test_a_stale_xgboost_variants_table_fails_and_write_repairs_it(tmp_path):
    path = project(tmp_path, ROWS, variants_block=VARIANTS.replace("80.42", "169.24"))
    result = run(path)
    assert result.returncode == 1 and "gen_xgboost_variants block" in result.stdout
    assert run(path, "--write").returncode == 0
    text = (path / "README.md").read_text()
    assert VARIANTS in text and "169.24" not in text and run(path).returncode == 0


def test_a_table_that_gains_rows_is_found_and_rewritten_keeping_the_prose_after_it(tmp_path):
    """A new model adds rows, so the table's last line changes: the block is found by its first line and
    its end marker (before, --write could not find it and the README had to be spliced by hand)."""
    grown = TABLE + "\n\n| model | IS |\n| --- | --- |\n| vqvae | 1.363 |"  # a new last line, as a new model gives
    path = project(tmp_path, ROWS, fid_table=grown)
    result = run(path)
    assert result.returncode == 1 and "fid_table block: differs" in result.stdout
    assert run(path, "--write").returncode == 0
    text = (path / "README.md").read_text()
    assert grown + "\n<!-- fid_table:table-end -->\n\n**Reading it.** prose" in text
    assert text.count("| 128 | 5.291") == 1 and run(path).returncode == 0


ROOT = Path(__file__).resolve().parents[1]
README_LINES = 250  # what a newcomer reads in five minutes; every other result is in docs/results.md


def test_the_readme_is_read_in_five_minutes():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_LINES, f"README.md has {lines} lines, over {README_LINES}: move results to docs/results.md"


def test_blocks_moved_to_docs_results_are_checked_there_and_named_by_their_file(tmp_path):
    stale = [ROWS[0].replace("80.44", "80.45"), ROWS[1], ROWS[2]]
    path = project(tmp_path, stale, variants_block=VARIANTS.replace("80.42", "169.24"), moved=True)
    readme = (path / "README.md").read_text()
    result = run(path)
    assert result.returncode == 1
    assert "docs/results.md: training block: sarnet_vae_L128: docs/results.md says" in result.stdout
    assert "docs/results.md: gen_xgboost_variants block: differs" in result.stdout
    assert "README.md:" not in result.stdout  # the README's own blocks (the FID table) are right
    assert run(path, "--write").returncode == 0
    text = (path / "docs" / "results.md").read_text()
    assert ROWS[0] in text and VARIANTS in text and "169.24" not in text and "80.45" not in text
    assert (path / "README.md").read_text() == readme
    result = run(path)
    assert result.returncode == 0 and "README.md, docs/results.md: results match" in result.stdout


def test_the_readme_s_own_blocks_are_named_by_the_readme(tmp_path):
    path = project(tmp_path, ROWS, fid_table=TABLE.replace("5.291", "4.000"), moved=True)
    result = run(path)
    assert result.returncode == 1 and "README.md: fid_table block: differs" in result.stdout
    assert "docs/results.md:" not in result.stdout


def test_a_block_in_neither_file_is_an_error_naming_both(tmp_path):
    path = project(tmp_path, ROWS, moved=True)
    results = path / "docs" / "results.md"
    text = results.read_text()
    start, end = text.index("<!-- sarnet_ablation:start -->"), text.index("<!-- sarnet_ablation:end -->")
    results.write_text(text[:start] + text[end + len("<!-- sarnet_ablation:end -->"):])
    for args in ((), ("--write",)):
        result = run(path, *args)
        assert result.returncode == 1
        assert "no sarnet_ablation block in README.md or docs/results.md" in result.stderr
    results.unlink()  # no docs/results.md at all: its four blocks are missing
    assert ("no sarnet_ablation, gen_xgboost_variants, calibration, training block in README.md or docs/results.md"
            in run(path).stderr)


def _check_readme_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_readme", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_fid_table_dates_every_row_and_marks_the_stale_or_newer_ones():
    annotate = _check_readme_module().annotate_fid_table
    table = ("| L | ours | conv |\n| --- | --- | --- |\n| 128 | 5.291 ± 0.239 (50) | 6.000 ± 0.100 (10) |\n"
             "| model | ours |\n| xgb | 81.316 ± 1.248 (10) |\n")
    summary = {"vae": {"mean": 5.291, "std": 0.239, "sets": 50}, "conv": {"mean": 6.0, "std": 0.1, "sets": 10},
               "xgb": {"mean": 81.3161, "std": 1.2479, "sets": 10}}
    current = summary | {"conv": {"mean": 6.5, "std": 0.1}}  # re-evaluated after the table was made
    dates = {"vae": "2026-12-03", "conv": "2026-12-04", "xgb": "2026-12-05"}
    assert annotate(table, summary, current, dates, stale={"xgb"}) == (
        "| L | ours | conv |\n| --- | --- | --- |\n| 128 | 5.291 ± 0.239 (50; 2026-12-03) | 6.000 ± 0.100 (10; 2026-12-04) ⚠ |\n"
        "| model | ours |\n| xgb | 81.316 ± 1.248 (10; 2026-12-05) ⚠ |\n")


def test_the_readme_module_map_is_the_package_docstring_s(tmp_path):
    check_readme = _check_readme_module()
    (tmp_path / "src" / "sarnet").mkdir(parents=True)
    (tmp_path / "src" / "sarnet" / "__init__.py").write_text(
        '"""The library.\n\nModule map, lower layers first:\n  errors, files   the core\n  models          generators\n"""\n')
    fresh = "# x\n<!-- module_map:start -->\n<!-- module_map:end -->\n"
    text, problems = check_readme.module_map_block(fresh, tmp_path)
    assert problems == ["module_map block: differs from src/sarnet/__init__.py's module map"]
    assert text == ("# x\n<!-- module_map:start -->\n```\n  errors, files   the core\n  models          generators\n```\n"
                    "<!-- module_map:end -->\n")
    assert check_readme.module_map_block(text, tmp_path) == (text, [])
    drifted = text.replace("models ", "model  ")  # the README's copy drifted from the code's
    assert check_readme.module_map_block(drifted, tmp_path)[1] != []
    # a heading wrapped over lines is the heading, not part of the map
    (tmp_path / "src" / "sarnet" / "__init__.py").write_text(
        '"""The library.\n\nModule map, lower layers first (a long\nheading, wrapped):\n  errors, files   the core\n'
        '  models          generators\n"""\n')
    assert check_readme.module_map_block(text, tmp_path) == (text, [])
