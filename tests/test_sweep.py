"""tokcomp sweep: one recipe at several FLOPs budgets -> CSV / JSON / PNG curve.

The image folder is labeled with the tiny classifier's own predictions, so the
original scores 100% top-1 and each budget's accuracy equals its top-1 agreement.
"""

import csv

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import tiny_vision
from tokcomp.errors import TokcompError
from tokcomp.evaluation.sweep import CSV_COLUMNS, parse_budgets, recipe_at_budget, run_sweep, token_pass_index
from tokcomp.fileio import read_json
from tokcomp.recipe import load_recipe

IMAGES = 8


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("sweep")
    model = tiny_vision("vit")
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(root / "model")
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(root / "model")
    rng = np.random.default_rng(2)
    for i in range(IMAGES):
        image = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        with torch.no_grad():
            predicted = model(**processor(images=image, return_tensors="pt")).logits.argmax(-1).item()
        folder = root / "images" / model.config.id2label[predicted]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    recipe = {
        "model": str(root / "model"),
        "passes": [{"type": "tome", "r": 4}],
        "evaluation": {"data": str(root / "images"), "samples": IMAGES, "batch_size": 4},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root / "recipe.yaml"


@pytest.fixture(scope="module")
def swept(recipe_file):
    from tokcomp.cli import app

    out = recipe_file.parent / "sweep"
    result = CliRunner().invoke(app, ["sweep", str(recipe_file), "--budgets", "1.0, 0.8,0.6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str((out / "sweep.csv").resolve())
    return out


def _rows(out):
    with open(out / "sweep.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def test_csv_has_the_original_and_every_budget_with_the_compiled_numbers(swept):
    rows = _rows(swept)
    assert [r["budget"] for r in rows] == ["original", "1.0", "0.8", "0.6"]
    for row in rows[1:]:
        checkpoint = swept / row["checkpoint"]
        report = read_json(checkpoint / "report.json")
        (record,) = read_json(checkpoint / "tokcomp.json")["passes"]
        assert record["config"]["target_flops"] == float(row["budget"]) and "r" not in record["config"]
        assert float(row["gmacs"]) == report["flops"]["compressed"]
        assert float(row["cosine_mean"]) == report["fidelity"]["cosine_mean"]
        assert float(row["random_drop_cosine_mean"]) == report["fidelity"]["random_drop_baseline"]["cosine_mean"]
        assert int(row["final_tokens"]) == report["tokens_per_layer"]["compressed"][-1]
        assert abs(float(row["flops_ratio"]) - float(row["budget"])) < 0.1  # the closest constant r
    gmacs = [float(r["gmacs"]) for r in rows]
    assert gmacs[0] == gmacs[1] > gmacs[2] > gmacs[3]  # budget 1.0 keeps every token


def test_accuracy_is_known_on_self_labeled_data(swept):
    original, full, *reduced = _rows(swept)
    assert float(original["top1_accuracy"]) == 1.0 and original["top5_accuracy"] == "1.0"
    assert float(full["top1_accuracy"]) == 1.0 and float(full["cosine_min"]) > 1 - 1e-5
    for row in [full, *reduced]:  # labels are the original's predictions: right == agrees with the original
        assert float(row["top1_accuracy"]) == pytest.approx(float(row["top1_agreement"]))
    assert float(reduced[-1]["cosine_mean"]) < 1


def test_json_and_plot_are_written(swept):
    data = read_json(swept / "sweep.json")
    assert data["kind"] == "tokcomp-sweep" and data["reducer"] == "tome"
    assert [str(r["budget"]) for r in data["rows"]] == ["original", "1.0", "0.8", "0.6"]
    png = (swept / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    with Image.open(swept / "sweep.png") as image:  # two panels (fidelity, accuracy): wider than tall
        assert image.width > 1.8 * image.height
        assert len(image.convert("RGB").getcolors(1 << 20)) > 20  # lines and text, not a blank canvas


def test_existing_output_is_refused_before_any_compile(swept, recipe_file):
    stamp = (swept / "sweep.csv").stat().st_mtime_ns
    with pytest.raises(TokcompError, match="--force"):
        run_sweep(load_recipe(recipe_file), [0.5], swept)
    assert (swept / "sweep.csv").stat().st_mtime_ns == stamp


def test_budget_overrides_go_through_the_recipe_schema(recipe_file):
    recipe = load_recipe(recipe_file)
    index = token_pass_index(recipe)
    variant = recipe_at_budget(recipe, index, "-30%", {"samples": 3})
    (spec,) = variant.passes
    assert spec.config.target_flops == "-30%" and spec.config.r is None
    assert variant.document.evaluation.samples == 3 and variant.document.evaluation.batch_size == 4
    assert "target_flops: -30%" in variant.text  # provenance in each checkpoint's recipe.yaml
    with pytest.raises(TokcompError, match="no_such_key"):
        recipe_at_budget(recipe, index, 0.5, {"no_such_key": 1})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.9, -30%,2.9G", [0.9, "-30%", "2.9G"]), ("1", [1.0])],
)
def test_budgets_parse(text, expected):
    assert parse_budgets(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("1.5", "not a fraction"), ("0.5,0.5", "twice"), (" , ", "no budgets"), ("fast", "not understood")],
)
def test_bad_budgets_are_named(text, message):
    with pytest.raises(TokcompError, match=message):
        parse_budgets(text)


def test_recipe_without_a_budget_pass_is_refused(recipe_file):
    import dataclasses

    from tokcomp.passes import PassConfig
    from tokcomp.recipe import PassSpec

    recipe = dataclasses.replace(load_recipe(recipe_file), passes=[PassSpec("other", PassConfig())])
    with pytest.raises(TokcompError, match="no pass in this recipe takes a FLOPs budget"):
        token_pass_index(recipe)


# ------------------------------------------------------------------ the README results table
# benchmarks/readme_table.py reads sweep-shaped rows among others; its tests live here beside the sweep.


def _readme_table():
    import importlib.util
    import sys
    from pathlib import Path

    if "readme_table" not in sys.modules:  # a script, not a package module: load it by path, once
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "readme_table.py"
        spec = importlib.util.spec_from_file_location("readme_table", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["readme_table"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["readme_table"]


README = "# project\n\nintro\n\n## Results\n\n<!-- results:start -->\nold table\n<!-- results:end -->\n\n## After\n"


@pytest.fixture
def results_root(tmp_path, swept):
    import json
    import shutil

    (tmp_path / "README.md").write_text(README)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    shutil.copy(swept / "sweep.json", results / "sweep_tiny.json")  # fidelity and FLOPs per budget
    model = read_json(swept / "sweep.json")["model"]
    throughput = {  # a CPU benchmark that only measures speed: joined to the sweep by (model, reducer, budget)
        "machine": {"cpu": "test cpu", "threads": 2},
        "rows": [
            {"model": model, "reducer": "none", "images_per_s": 10.0},
            {"model": model, "reducer": "tome", "budget": 0.8, "images_per_s": 13.0},
        ],
    }
    (results / "cpu_throughput.json").write_text(json.dumps(throughput))
    gpu = [{"method": "tome", "target_flops": 0.8, "model": model, "speedup": 1.9}]
    (results / "gpu_bench.json").write_text(json.dumps(gpu))
    # Rows keyed by model / budget / row name; a budget a reducer missed; FLOPs as a cut.
    reducers = {
        "machine": {"cpu": "test cpu", "threads": 2},
        "models": {
            "other-model": {
                "budgets": {
                    "-20%": {
                        "rows": {
                            "tome": {"pass": {"type": "tome"}, "flops_cut": 0.2, "cosine_mean": 0.5, "speedup": 1.1},
                            "evit": {"pass": {"type": "evit"}, "flops_cut": 0.19, "matched": False, "speedup": 1.5},
                        }
                    }
                }
            }
        },
    }
    (results / "reducers.json").write_text(json.dumps(reducers))
    # A row that names only its recipe: joined through the recipe's model, pass and budget; its own runtime column.
    (tmp_path / "recipes").mkdir()
    recipe = {"model": model, "passes": [{"type": "tome", "target_flops": 0.8}]}
    (tmp_path / "recipes" / "r.yaml").write_text(yaml.safe_dump(recipe))
    onnx = {"results": [{"recipe": "recipes/r.yaml", "runtime": "onnxruntime", "speedup": 1.4}]}
    (results / "onnx_cpu.json").write_text(json.dumps(onnx))
    # The same (model, reducer, budget) measured under another condition: kept apart by the file's scope.
    scoped = {
        "scope": "long inputs",
        "rows": [{"model": model, "reducer": "tome", "budget": 0.8, "cosine_mean": 0.125}],
    }
    (results / "long_inputs.json").write_text(json.dumps(scoped))
    (results / "broken.json").write_text("{")
    (results / "notes.json").write_text('{"comment": "no rows here"}')
    return tmp_path


def _table_rows(readme: str) -> dict[tuple[str, str, str], dict[str, str]]:
    lines = [line for line in readme.splitlines() if line.startswith("| ") and "---" not in line]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, [c.strip() for c in line.strip("|").split("|")], strict=True)) for line in lines[1:]]
    return {(row["Model"], row["Reducer"], row["Budget"]): row for row in rows}


def test_readme_table_merges_every_results_file_and_touches_only_the_marked_section(results_root, swept, capsys):
    table = _readme_table()
    args = ["--root", str(results_root), "--results", str(results_root / "benchmarks" / "results")]
    assert table.main(args) == 0
    assert "skipped broken.json: not valid JSON" in capsys.readouterr().err
    readme = (results_root / "README.md").read_text()
    head, rest = readme.split("<!-- results:start -->")
    assert head == README.split("<!-- results:start -->")[0] and rest.endswith("<!-- results:end -->\n\n## After\n")
    assert "old table" not in readme
    rows = _table_rows(readme)
    model = read_json(swept / "sweep.json")["model"]
    tiny = {budget: row for (m, _, budget), row in rows.items() if m == model}
    assert sorted(tiny) == ["0.6", "0.8", "0.8 (long inputs)", "1"]  # every budget of the sweep; the original is no row
    assert tiny["0.8 (long inputs)"]["Output cosine"] == "0.1250"
    assert tiny["0.8 (long inputs)"]["Source"] == "`long_inputs.json`"
    sweep = {str(r["budget"]): r for r in read_json(swept / "sweep.json")["rows"]}
    assert tiny["0.8"]["Output cosine"] == f"{sweep['0.8']['cosine_mean']:.4f}"
    assert tiny["0.8"]["GMACs"] == f"{sweep['0.8']['gmacs']:.3f}"
    assert tiny["0.8"]["CPU speed-up"] == "1.30x" and tiny["0.8"]["GPU speed-up"] == "1.90x"
    assert tiny["0.8"]["CPU speed-up (onnxruntime)"] == "1.40x"
    assert tiny["0.6"]["CPU speed-up"] == "-"
    assert tiny["0.8"]["Source"] == "`cpu_throughput.json`, `gpu_bench.json`, `onnx_cpu.json`, `sweep_tiny.json`"
    assert rows[("other-model", "tome", "-20%")]["FLOPs"] == "-20.0%"
    assert rows[("other-model", "tome", "-20%")]["CPU speed-up"] == "1.10x"  # device from the machine object
    assert rows[("other-model", "evit", "-20% (not met)")]["FLOPs"] == "-19.0%"
    assert "Measured on: `cpu_throughput.json`, `reducers.json`: cpu test cpu, threads 2." in readme
    assert "Other results: [`notes.json`]" in readme

    assert table.main([*args, "--check"]) == 0
    (results_root / "benchmarks" / "results" / "gpu_bench.json").unlink()  # results changed, README not yet
    assert table.main([*args, "--check"]) == 1
    assert (results_root / "README.md").read_text() == readme  # --check writes nothing


def test_readme_table_without_results_or_markers(tmp_path):
    table = _readme_table()
    (tmp_path / "README.md").write_text(README)
    assert table.main(["--root", str(tmp_path), "--results", str(tmp_path / "missing")]) == 0
    assert "No benchmark results are committed yet" in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(SystemExit, match="results:start"):
        table.main(["--root", str(tmp_path)])


def test_committed_readme_matches_committed_results():
    """README.md's results section is exactly what the script makes from benchmarks/results/*.json."""
    assert _readme_table().main(["--check"]) == 0, "run: python benchmarks/readme_table.py"
