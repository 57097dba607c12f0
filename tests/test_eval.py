"""tokcomp eval: accuracy and fidelity where the right answer is known.

The image folder is labeled with the tiny classifier's own predictions, so the
original model scores exactly 100% top-1, and the compressed model's top-1 accuracy
must equal its top-1 agreement with the original.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import tokcomp
from tests.conftest import tiny_vision
from tokcomp.data import Sample
from tokcomp.errors import CheckpointError, TokcompError
from tokcomp.evaluation import Reference, evaluate_checkpoint, load_eval_set, open_original, score
from tokcomp.evaluation.labels import UNLABELED, classifier_targets
from tokcomp.evaluation.metrics import AccuracyMeter
from tokcomp.fileio import read_json

IMAGES = 12


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """A tiny ViT classifier folder and an image folder whose class folders are its own predictions."""
    from transformers import ViTImageProcessor

    root = tmp_path_factory.mktemp("eval")
    model = tiny_vision("vit")
    model.config.architectures = ["ViTForImageClassification"]
    model.save_pretrained(root / "model")
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(root / "model")
    rng = np.random.default_rng(1)
    for i in range(IMAGES):
        image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        with torch.no_grad():
            predicted = model(**processor(images=image, return_tensors="pt")).logits.argmax(-1).item()
        folder = root / "images" / model.config.id2label[predicted]  # e.g. LABEL_3: the model's own label name
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    return root


def _compile(root, name, r, samples=IMAGES):
    recipe = {
        "model": str(root / "model"),
        "passes": [{"type": "tome", "r": r}],
        "evaluation": {"data": str(root / "images"), "samples": samples, "batch_size": 4},
    }
    return tokcomp.compile(recipe, root / name, force=True)


@pytest.fixture(scope="module")
def identity(labeled):
    return _compile(labeled, "identity", r=0)


@pytest.fixture(scope="module")
def merged(labeled):
    return _compile(labeled, "merged", r=6)


def test_identity_compression_keeps_accuracy_and_outputs(identity, labeled):
    result = evaluate_checkpoint(identity, str(labeled / "images"), batch_size=4)
    accuracy, fidelity = result["accuracy"], result["fidelity"]
    assert accuracy["labels"] == "class folders matched to the model's label names"
    assert accuracy["original"] == {"samples": IMAGES, "top1": 1.0, "top5": 1.0}
    assert accuracy["compressed"] == accuracy["original"]
    assert fidelity["samples"] == IMAGES
    assert fidelity["cosine_min"] > 1 - 1e-5
    assert fidelity["top1_agreement"] == 1.0
    assert fidelity["kl_mean"] < 1e-6
    assert result["notes"] == []


def test_merged_accuracy_equals_agreement_and_matches_compile_report(merged, labeled):
    result = evaluate_checkpoint(merged, str(labeled / "images"), batch_size=4)
    accuracy, fidelity = result["accuracy"], result["fidelity"]
    assert accuracy["original"]["top1"] == 1.0
    # Labels are the original's predictions, so being right == agreeing with the original.
    assert accuracy["compressed"]["top1"] == pytest.approx(fidelity["top1_agreement"])
    report = read_json(merged / "report.json")["fidelity"]  # compile scored the same data, same batches
    for key in ("samples", "cosine_mean", "cosine_min", "top1_agreement", "kl_mean"):
        assert fidelity[key] == pytest.approx(report[key], rel=1e-5, abs=1e-7), key
    assert fidelity["cosine_mean"] < 1  # r=6 really changed the outputs


def test_saved_dataset_labels_are_class_indices(merged, labeled):
    """A Hugging Face save_to_disk data set: its integer labels are used as the classifier's classes."""
    datasets = pytest.importorskip("datasets", reason="reading save_to_disk data sets needs the datasets package")
    files = sorted((labeled / "images").rglob("*.png"))
    table = datasets.Dataset.from_dict(
        {"image": [Image.open(f).convert("RGB") for f in files], "label": [int(f.parent.name[6:]) for f in files]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    table.save_to_disk(str(labeled / "saved"))
    result = evaluate_checkpoint(merged, str(labeled / "saved"), batch_size=4)
    folder = evaluate_checkpoint(merged, str(labeled / "images"), batch_size=4)
    assert result["accuracy"]["labels"] == "the data set's own class indices"
    assert result["accuracy"]["original"]["top1"] == 1.0  # LABEL_<k> folders were the original's predictions
    assert result["accuracy"]["compressed"]["top1"] == folder["accuracy"]["compressed"]["top1"]


def test_original_is_the_base_model_without_passes(merged, labeled):
    from transformers import ViTForImageClassification

    saved = ViTForImageClassification.from_pretrained(labeled / "model").eval()
    rebuilt = open_original(merged)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(saved(pixel_values=pixels).logits, rebuilt(pixel_values=pixels).logits)


def test_cli_writes_json_refuses_overwrite_and_scores_without_original(merged, labeled):
    from tokcomp.cli import app

    runner = CliRunner()
    args = ["eval", str(merged), "--data", str(labeled / "images"), "--samples", "6", "--batch-size", "3"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    written = read_json(merged / "eval.json")
    assert first.stdout.strip().splitlines()[-1] == str((merged / "eval.json").resolve())
    assert written["kind"] == "tokcomp-eval" and written["samples"] == 6 and written["data"] == str(labeled / "images")
    again = runner.invoke(app, args)
    assert isinstance(again.exception, TokcompError) and "--force" in str(again.exception)

    alone = runner.invoke(app, [*args, "--no-fidelity", "-o", str(labeled / "alone.json")])
    assert alone.exit_code == 0, alone.output
    result = read_json(labeled / "alone.json")
    assert result["fidelity"] is None and "original" not in result["accuracy"]
    assert result["accuracy"]["compressed"] == written["accuracy"]["compressed"]
    assert result["notes"] == ["fidelity skipped: no original model to compare with"]


def test_no_classifier_or_foreign_labels_skip_accuracy_with_a_reason(labeled):
    import copy

    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    backbone = tiny_vision("dinov2")  # no classifier head
    original = copy.deepcopy(backbone)
    tokcomp.apply(backbone, [{"type": "tome", "r": 4}])
    eval_set = load_eval_set(str(labeled / "images"), "image", processor, None, batch_size=5)
    result = score(backbone, eval_set, "cls", Reference(original, "cls"))
    assert result["accuracy"] is None and result["fidelity"]["samples"] == IMAGES
    assert result["notes"] == ["accuracy skipped: the model has no classifier head (no logits)"]

    classifier = tiny_vision("vit")  # 10 classes; relabel the samples as class 50
    eval_set.targets.values[:] = [50] * IMAGES
    result = score(classifier, eval_set, "cls", None)
    assert result["accuracy"] is None
    assert "12 labels are outside the classifier's 10 classes" in result["notes"][-1]


def test_folder_names_become_the_models_class_indices():
    def samples(*folders):
        return [Sample(None, label=i, name=f"{f}/x{i}.png") for i, f in enumerate(folders)]

    id2label = {0: "tench, Tinca tinca", 1: "goldfish", 2: "great white shark"}
    named = classifier_targets(samples("goldfish", "Great-White_Shark", "tench"), "/data", id2label)
    assert named.values == [1, 2, 0] and "label names" in named.how
    numbered = classifier_targets(samples("7", "3"), "/data", id2label)
    assert numbered.values == [7, 3] and "indices" in numbered.how
    other = classifier_targets(samples("cat", "dog"), "/data", id2label)
    assert other.values == [0, 1] and "sorted order" in other.how
    zoo = classifier_targets([Sample(None, 243, "imagenet_00_243"), Sample(None, None, "astronaut")], "zoo:images", {})
    assert zoo.values == [243, UNLABELED] and zoo.labeled == 1


def test_accuracy_meter_counts_top1_top5_and_skips_unlabeled():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    meter = AccuracyMeter()
    meter.update(logits, torch.tensor([0, 0, UNLABELED]))  # first: top-1 hit; second: class 0 ranks 6th
    meter.update(logits[:1], torch.tensor([4]))  # ranks 5th: a top-5 hit only
    assert meter.result() == {"samples": 3, "top1": 1 / 3, "top5": 2 / 3}


def test_wrong_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a tokcomp checkpoint"):
        evaluate_checkpoint(tmp_path)


@pytest.mark.slow
def test_text_model_fidelity_matches_compile_report(tmp_path):
    """zoo:minilm-l6 (mean pooling, padding): eval reproduces report.json's fidelity; no labels, no accuracy."""
    recipe = {
        "model": "zoo:minilm-l6",
        "passes": [{"type": "tome", "r": 4}],
        "evaluation": {"data": "zoo:text", "samples": 8, "batch_size": 4, "random_baseline": False},
    }
    out = tokcomp.compile(recipe, tmp_path / "minilm")
    result = evaluate_checkpoint(out, "zoo:text", samples=8, batch_size=4)
    report = read_json(out / "report.json")["fidelity"]
    assert result["fidelity"]["cosine_mean"] == pytest.approx(report["cosine_mean"], rel=1e-5)
    assert result["fidelity"]["cosine_min"] == pytest.approx(report["cosine_min"], rel=1e-5)
    assert result["accuracy"] is None and result["notes"] == ["accuracy skipped: the data has no labels"]


def test_default_thresholds_flag_nothing_on_a_faithful_model(identity):
    fidelity = read_json(identity / "report.json")["fidelity"]
    assert fidelity["warn_below"] == {"cosine_mean": 0.9, "cosine_min": None, "top1_agreement": 0.8}
    assert fidelity["below_threshold"] == {}


def test_low_fidelity_is_flagged_in_the_report_the_page_inspect_and_eval(labeled, tmp_path, monkeypatch, capsys):
    import sys

    from tokcomp.cli import main
    from tokcomp.visual import write_report

    images = str(labeled / "images")
    strict = {"cosine_mean": 0.99999999, "top1_agreement": None}  # r=6 keeps less than that
    recipe = {
        "model": str(labeled / "model"),
        "passes": [{"type": "tome", "r": 6}],
        "evaluation": {"data": images, "samples": 6, "batch_size": 3, "random_baseline": False, "warn_below": strict},
    }
    out = tokcomp.compile(recipe, tmp_path / "low")
    fidelity = read_json(out / "report.json")["fidelity"]
    assert list(fidelity["below_threshold"]) == ["cosine_mean"] and fidelity["warn_below"]["cosine_mean"] == 0.99999999

    assert "warning: low fidelity (cosine_mean 0." in write_report(out, images=0).read_text()

    monkeypatch.setattr(sys, "argv", ["tokcomp", "inspect", str(out)])
    with pytest.raises(SystemExit):
        main()
    assert "warning: low fidelity (cosine_mean 0." in capsys.readouterr().err  # shown even with TOKCOMP_QUIET

    result = evaluate_checkpoint(out, images, samples=6, batch_size=3)  # held to the thresholds compile used
    assert list(result["fidelity"]["below_threshold"]) == ["cosine_mean"]


def test_evaluation_false_skips_fidelity(labeled, tmp_path):
    from tokcomp.recipe import recipe_from_dict, without_evaluation

    recipe = {"model": str(labeled / "model"), "passes": [{"type": "tome", "r": 2}], "evaluation": False}
    out = tokcomp.compile(recipe, tmp_path / "fast")
    assert read_json(out / "report.json")["fidelity"] is None
    assert read_json(out / "report.json")["flops"]["ratio"] < 1  # everything else is still measured
    assert without_evaluation(recipe_from_dict({**recipe, "evaluation": True})).document.evaluation is None
