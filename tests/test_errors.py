"""The bad inputs a new user would try, one table: for each, the CLI exits 2 with one line that
names the problem (and, in parentheses, the fix), prints no traceback, and leaves every file
that existed before byte-for-byte untouched.

The CLI runs in-process (tokcomp.cli.main, exactly what the `tokcomp` script calls) so the
whole table takes seconds; tests/test_cli.py runs the real process for signals and noise.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tokcomp
from tokcomp.cli import main

# {root} is the shared world below, {tmp} the case's own folder (filled in by `fill`).
GOOD = "model: {root}/vit\npasses: [{type: tome, r: 2}]\nevaluation: false\n"


def recipe(body: str) -> dict[str, str]:
    """A case's files: the recipe r.yaml (GOOD's model and passes unless `body` says otherwise)."""
    return {"r.yaml": body}


def with_eval(data: str) -> dict[str, str]:
    return recipe("model: {root}/vit\npasses: [{type: tome, r: 2}]\nevaluation: {data: %s}\n" % data)


COMPILE = ["compile", "{tmp}/r.yaml", "-o", "{tmp}/out"]
EVAL = ["eval", "{root}/ckpt", "--no-fidelity", "-o", "{tmp}/eval.json"]
VOCAB_TRIM = "model: {root}/vit\npasses:\n  - type: vocab_trim\n    languages: [en]\n"

# (id, files to write into the case folder, CLI arguments, what the one line must contain)
# fmt: off
CASES = [
    # --- the recipe file and its schema
    ("recipe-missing", {}, ["compile", "{tmp}/nope.yaml", "-o", "{tmp}/out"], ["recipe file", "not found", "recipes/"]),
    ("recipe-is-a-folder", {}, ["compile", "{root}/imgs", "-o", "{tmp}/out"], ["is a folder", ".yaml"]),
    ("yaml-syntax", recipe("model: [oops\n"), COMPILE, ["r.yaml:2", "YAML syntax error"]),
    ("recipe-is-a-list", recipe("- model: m\n"), COMPILE, ["a recipe is a mapping"]),
    ("recipe-empty", recipe(""), COMPILE, ["a recipe is a mapping"]),
    ("recipe-not-utf8", {"r.yaml": b"model: caf\xe9\n"}, COMPILE, ["r.yaml:1", "not UTF-8", "save the file as UTF-8"]),
    ("top-level-typo", recipe("model: m\npases: [{type: tome, r: 2}]\n"), COMPILE, ["unknown key 'pases'", "did you mean 'passes'"]),
    ("unknown-top-level-key", recipe("model: m\nsede: 1\npasses: [{type: tome, r: 1}]\n"), COMPILE, ["r.yaml:2", "unknown key 'sede'", "valid keys: model, passes"]),
    ("passes-missing", recipe("model: m\n"), COMPILE, ["passes: required key is missing"]),
    ("passes-empty", recipe("model: m\npasses: []\n"), COMPILE, ["passes", "at least 1 item"]),
    ("pass-unknown-type", recipe("model: m\npasses:\n  - type: tomee\n"), COMPILE, ["r.yaml:3", "unknown pass 'tomee'", "valid types"]),
    ("pass-without-type", recipe("model: m\npasses:\n  - r: 2\n"), COMPILE, ["passes[0]", "missing 'type'"]),
    ("pass-unknown-key", recipe("model: m\npasses:\n  - {type: tome, r: 2, rr: 1}\n"), COMPILE, ["unknown key 'rr'", "did you mean 'r'"]),
    ("pass-wrong-type", recipe("model: m\npasses:\n  - type: tome\n    r: lots\n"), COMPILE, ["r.yaml:4", "passes[0].r", "'lots'"]),
    ("pass-r-and-flops", recipe("model: m\npasses:\n  - {type: tome, r: 2, target_flops: 0.5}\n"), COMPILE, ["exactly one of"]),
    ("calibration-samples-zero", recipe("model: m\npasses: [{type: tome, r: 1}]\ncalibration: {samples: 0}\n"), COMPILE, ["calibration.samples", "greater than 0"]),
    ("forward-loop-form", recipe("model: m\npasses: [{type: tome, r: 1}]\ncalibration: {forward_loop: nope}\n"), COMPILE, ["forward_loop must look like"]),
    ("evaluation-wrong-type", recipe("model: m\npasses: [{type: tome, r: 1}]\nevaluation: often\n"), COMPILE, ["evaluation", "'often'"]),
    ("evaluation-batch-negative", recipe("model: m\npasses: [{type: tome, r: 1}]\nevaluation: {batch_size: -1}\n"), COMPILE, ["evaluation.batch_size", "greater than 0"]),
    ("evaluation-key-typo", recipe("model: m\npasses: [{type: tome, r: 1}]\nevaluation: {sample: 4}\n"), COMPILE, ["unknown key 'sample'", "did you mean 'samples'"]),
    ("warn-below-out-of-range", recipe("model: m\npasses: [{type: tome, r: 1}]\nevaluation: {warn_below: {cosine_mean: 2}}\n"), COMPILE, ["evaluation.warn_below.cosine_mean", "less than or equal to 1"]),
    ("seed-not-a-number", recipe("model: m\npasses: [{type: tome, r: 1}]\nseed: abc\n"), COMPILE, ["seed", "'abc'"]),
    ("export-unknown-format", recipe(GOOD + "export: [pdf]\n"), COMPILE, ["unknown export formats ['pdf']", "choose from onnx"]),
    # --- budgets and sizes the model cannot take (checked when the pass resolves its budget)
    ("r-negative", recipe("model: {root}/vit\npasses: [{type: tome, r: -5}]\nevaluation: false\n"), COMPILE, ["r = -5 is negative", "0 or more"]),
    ("r-more-than-the-tokens", recipe("model: {root}/vit\npasses: [{type: tome, r: 10000}]\nevaluation: false\n"), COMPILE, ["r = 10000 is more than the 64 reducible tokens", "target_flops"]),
    ("r-list-negative", recipe("model: {root}/vit\npasses: [{type: prune, r: [2, -1, 2, 2]}]\nevaluation: false\n"), COMPILE, ["r[1] = -1 is negative"]),
    ("flops-below-zero", recipe("model: {root}/vit\npasses: [{type: tome, target_flops: '-120%'}]\nevaluation: false\n"), COMPILE, ["target_flops '-120%' is at or below 0 FLOPs", "reachable with tome on this model: -", "choose a target_flops inside that range"]),
    ("flops-unreachable", recipe("model: {root}/vit\npasses: [{type: tome, target_flops: 0.0001G}]\nevaluation: false\n"), COMPILE, ["beyond what the model can reach", "reachable with tome"]),
    ("flops-above-original", recipe("model: {root}/vit\npasses: [{type: tome, target_flops: 50G}]\nevaluation: false\n"), COMPILE, ["50.000 GMACs, above the original", "reachable with tome"]),
    ("flops-bool", recipe("model: {root}/vit\npasses: [{type: tome, target_flops: true}]\nevaluation: false\n"), COMPILE, ["passes[0].target_flops", "not true/false"]),
    ("targets-bad-regex", recipe("model: {root}/vit\npasses: [{type: tome, r: 2, targets: ['re:layers.[0-']}]\nevaluation: false\n"), COMPILE, ["passes[0].targets", "not a valid regular expression"]),
    ("image-size-not-the-models", recipe("model: {source: {root}/vit, image_size: 48}\npasses: [{type: tome, r: 2}]\nevaluation: false\n"), COMPILE, ["image_size 48", "takes 32 px images only", "use image_size 32"]),
    # --- the model
    ("model-key-missing", recipe("passes: [{type: tome, r: 1}]\n"), COMPILE, ["model: required key is missing"]),
    ("model-wrong-type", recipe("model: 123\npasses: [{type: tome, r: 1}]\n"), COMPILE, ["model", "123"]),
    ("model-folder-missing", recipe("model: /no/such/model\npasses: [{type: tome, r: 1}]\n"), COMPILE, ["cannot load model '/no/such/model': no such folder", "zoo:<name>"]),
    ("model-folder-not-a-model", recipe("model: {root}/imgs\npasses: [{type: tome, r: 1}]\n"), COMPILE, ["imgs has no config.json", "Hugging Face model folder"]),
    ("model-is-a-file", recipe("model: {root}/data.csv\npasses: [{type: tome, r: 1}]\n"), COMPILE, ["data.csv' is a file", "config.json"]),
    ("model-zoo-unknown", recipe("model: zoo:nope\npasses: [{type: tome, r: 1}]\nevaluation: false\n"), COMPILE, ["unknown zoo model 'zoo:nope'", "zoo:dinov2-small"]),
    ("model-is-a-checkpoint", recipe("model: {root}/ckpt\npasses: [{type: tome, r: 1}]\n"), COMPILE, ["is a tokcomp checkpoint", "vit + tome", "tokcomp.apply()"]),
    ("vocab-trim-image-model", recipe(VOCAB_TRIM + "    corpus: [zoo:wordfreq]\n"), COMPILE, ["passes[0].type", "vocab_trim applies to text / audio models", "a model for image", "tokcomp zoo list"]),
    ("vocab-trim-image-model-no-corpus", recipe(VOCAB_TRIM), COMPILE, ["vocab_trim applies to text / audio models", "a model for image"]),
    # --- data files (compile measures fidelity on them; eval scores on them)
    ("data-missing", with_eval("{root}/nothing"), COMPILE, ["data '", "nothing' not found", "zoo:images"]),
    ("data-corrupt-jpg", with_eval("{root}/bad_imgs"), COMPILE, ["broken.jpg: not a readable image", "replace the file"]),
    ("data-csv", with_eval("{root}/data.csv"), COMPILE, ["data.csv' is not a kind tokcomp reads", ".jsonl"]),
    ("data-zoo-unknown", with_eval("zoo:nothing"), COMPILE, ["unknown built-in data 'zoo:nothing'"]),
    ("data-empty-folder", {"empty/.keep": ""}, ["eval", "{root}/ckpt", "--data", "{tmp}/empty", "-o", "{tmp}/e.json"], ["no images", "empty"]),
    ("data-jsonl-malformed", {}, [*EVAL, "--data", "{root}/bad.jsonl"], ["bad.jsonl:2: not valid JSON", "one JSON object per line"]),
    ("data-jsonl-not-an-object", {}, [*EVAL, "--data", "{root}/list.jsonl"], ["list.jsonl:1: a JSON list, not an object"]),
    ("data-jsonl-no-text", {}, [*EVAL, "--data", "{root}/notext.jsonl"], ['notext.jsonl:1: the JSON object has no "text" field with a string value']),
    ("data-jsonl-label-not-index", {}, [*EVAL, "--data", "{root}/badlabel.jsonl"], ["badlabel.jsonl:1", "'cat' is not a class index"]),
    ("data-txt-not-utf8", {}, [*EVAL, "--data", "{root}/latin1.txt"], ["latin1.txt:2: not UTF-8", "byte 0xe9", "save the file as UTF-8"]),
    ("data-text-for-image-model", {}, [*EVAL, "--data", "{root}/good.txt"], ["holds text samples but the model takes image"]),
    # --- where the output goes
    ("output-is-a-checkpoint", recipe(GOOD), ["compile", "{tmp}/r.yaml", "-o", "{root}/ckpt"], ["ckpt already exists", "pass --force"]),
    ("output-foreign-folder", recipe(GOOD), ["compile", "{tmp}/r.yaml", "-o", "{root}/foreign"], ["holds files tokcomp did not write", "nothing was changed"]),
    ("output-foreign-folder-force", recipe(GOOD), ["compile", "{tmp}/r.yaml", "-o", "{root}/foreign", "--force"], ["--force replaces only a folder tokcomp wrote (one holding tokcomp.json)", "choose a new folder"]),
    ("output-is-a-file-force", recipe(GOOD), ["compile", "{tmp}/r.yaml", "-o", "{root}/data.csv", "--force"], ["data.csv is a file, not a folder"]),
    ("output-under-a-file", recipe(GOOD), ["compile", "{tmp}/r.yaml", "-o", "{root}/data.csv/out"], ["data.csv is a file, not a folder"]),
    ("output-is-the-working-directory", recipe(GOOD), ["compile", "r.yaml", "-o", ".", "--force"], ["is or contains the working directory", "runs/NAME"]),
    ("output-is-above-the-working-directory", recipe(GOOD), ["compile", "r.yaml", "-o", "..", "--force"], ["is or contains the working directory"]),
    ("output-holds-the-recipe", {"ck/tokcomp.json": "{}", "ck/r.yaml": GOOD}, ["compile", "{tmp}/ck/r.yaml", "-o", "{tmp}/ck", "--force"], ["is or contains the input", "ck/r.yaml"]),
    ("output-holds-the-data", {"ck/tokcomp.json": "{}", "ck/imgs/a.png": "", **with_eval("{tmp}/ck/imgs")}, [*COMPILE[:3], "{tmp}/ck", "--force"], ["is or contains the input", "ck/imgs"]),
    ("output-not-writable", recipe(GOOD), ["compile", "{tmp}/r.yaml", "-o", "/sys/tokcomp-test/out"], ["cannot write to /sys", "writable location"]),
    ("sweep-output-foreign-force", recipe(GOOD), ["sweep", "{tmp}/r.yaml", "--budgets", "0.5", "-o", "{root}/foreign", "--force"], ["one holding sweep.json"]),
    ("sweep-without-evaluation", recipe(GOOD), ["sweep", "{tmp}/r.yaml", "--budgets", "0.5", "-o", "{tmp}/sweep"], ["evaluation: false", "remove that line"]),
    ("sweep-bad-budget", recipe(GOOD), ["sweep", "{tmp}/r.yaml", "--budgets", "lots", "-o", "{tmp}/sweep"], ["lots"]),
    ("report-output-foreign-force", {}, ["report", "{root}/ckpt", "-o", "{root}/foreign", "--force", "--images", "0"], ["one holding report.html"]),
    ("eval-output-exists", {"e.json": "{}"}, ["eval", "{root}/ckpt", "-o", "{tmp}/e.json"], ["e.json already exists", "--force"]),
    ("eval-output-foreign-force", {}, ["eval", "{root}/ckpt", "-o", "{root}/notes.json", "--force"], ["notes.json already exists and is not a tokcomp-eval result"]),
    ("eval-output-is-a-folder", {}, ["eval", "{root}/ckpt", "-o", "{root}/foreign"], ["foreign is a folder, not a file"]),
    ("bench-output-foreign", {}, ["bench", "{root}/ckpt", "-r", "torch", "-o", "{root}/notes.json"], ["is not a tokcomp-bench result"]),
    ("bench-markdown-foreign", {}, ["bench", "{root}/ckpt", "-r", "torch", "--markdown", "{root}/README.md"], ["README.md already exists and is not a tokcomp-bench result"]),
    # --- checkpoints
    ("inspect-missing", {}, ["inspect", "{tmp}/nope"], ["nope does not exist"]),
    ("inspect-not-a-checkpoint", {}, ["inspect", "{root}/foreign"], ["is not a tokcomp checkpoint: tokcomp.json is missing", "tokcomp compile"]),
    ("inspect-corrupt-state", {"ck/tokcomp.json": "{not json"}, ["inspect", "{tmp}/ck"], ["tokcomp.json is corrupted"]),
    ("inspect-edited-state", {}, ["inspect", "{root}/ckpt_edited"], ["tokcomp.json was edited after compile", "instead of editing tokcomp.json"]),
    ("eval-edited-state", {}, ["eval", "{root}/ckpt_edited", "-o", "{tmp}/e.json"], ["tokcomp.json was edited after compile"]),
    ("export-swapped-weights", {}, ["export", "{root}/ckpt_swapped"], ["model.safetensors does not match tokcomp.json", "different compiles"]),
    ("eval-truncated-weights", {}, ["eval", "{root}/ckpt_truncated", "-o", "{tmp}/e.json"], ["model.safetensors is corrupted or truncated", "re-run tokcomp compile"]),
    ("report-not-a-checkpoint", {}, ["report", "{root}/foreign"], ["tokcomp.json is missing"]),
    ("export-not-a-checkpoint", {}, ["export", "{root}/foreign"], ["tokcomp.json is missing"]),
    # --- the command line itself
    ("compile-no-arguments", {}, ["compile"], ["Missing argument", "tokcomp compile --help"]),
    ("compile-option-typo", recipe(GOOD), [*COMPILE, "--forse"], ["No such option: --forse", "--force"]),
    ("command-typo", {}, ["compyle"], ["No such command 'compyle'", "tokcomp --help"]),
    ("eval-samples-zero", {}, ["eval", "{root}/ckpt", "--samples", "0"], ["--samples", "greater than or equal to 1", "tokcomp eval --help"]),
    ("eval-batch-size-text", {}, ["eval", "{root}/ckpt", "--batch-size", "many"], ["--batch-size", "a valid integer"]),
    ("export-cli-unknown-format", {}, ["export", "{root}/ckpt", "-f", "pdf"], ["unknown export format 'pdf'", "choose from onnx"]),
    ("export-bad-batch-sizes", {}, ["export", "{root}/ckpt", "--batch-sizes", "0,x"], ["batch sizes '0,x'", "e.g. 1,16"]),
    ("bench-bad-batch-sizes", {}, ["bench", "{root}/ckpt", "--batch-sizes", "a"], ["batch sizes 'a'"]),
    ("zoo-unknown-model", {}, ["zoo", "pull", "nope"], ["unknown zoo model 'nope'", "zoo:dinov2-small"]),
]
# fmt: on


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_vit_dir):
    """A tiny ViT model folder, a checkpoint of it (and broken copies), data files good and bad, foreign files."""
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(tiny_vit_dir, root / "vit")
    rng = np.random.default_rng(0)
    for folder in ("imgs/a", "imgs/b", "bad_imgs/a"):
        (root / folder).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / folder / "0.png")
    (root / "bad_imgs/a/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files = {
        "bad.jsonl": '{"text": "fine"}\n{"text": "cut off"\n',
        "list.jsonl": '["text", "in a list"]\n',
        "notext.jsonl": '{"txt": "typo"}\n',
        "badlabel.jsonl": '{"text": "a", "label": "cat"}\n',
        "good.txt": "one line\nanother line\n",
        "data.csv": "text,label\na,0\n",
        "notes.json": '{"mine": true}\n',
        "README.md": "# my notes\n",
        "foreign/notes.txt": "not tokcomp's",
        "foreign/sub/inner.txt": "nested",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "latin1.txt").write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin-1"))
    ckpt = tokcomp.compile({"model": str(root / "vit"), "passes": [{"type": "tome", "r": 2}], "evaluation": False}, root / "ckpt")
    _broken_copies(root, ckpt)
    return root


def _broken_copies(root: Path, ckpt: Path) -> None:
    import safetensors.torch

    edited = shutil.copytree(ckpt, root / "ckpt_edited")
    state = json.loads((edited / "tokcomp.json").read_text())
    state["passes"][0]["metadata"]["r_per_layer"] = [8, 8, 8, 8]  # what a hand edit looks like
    (edited / "tokcomp.json").write_text(json.dumps(state, indent=2))

    swapped = shutil.copytree(ckpt, root / "ckpt_swapped")
    tensors = safetensors.torch.load_file(swapped / "model.safetensors")
    tensors["extra.weight"] = torch.zeros(3)  # weights of another model: a different header
    safetensors.torch.save_file(tensors, swapped / "model.safetensors", metadata={"format": "pt"})

    truncated = shutil.copytree(ckpt, root / "ckpt_truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:5])


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under `roots`: content digest and mode (folders: mode only)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            stat = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            found[str(path)] = (digest, stat.st_mode)
    return found


def run_cli(monkeypatch, capsys, args: list[str], cwd: Path) -> tuple[int, str, str]:
    """`tokcomp ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["tokcomp", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


assert len({c[0] for c in CASES}) == len(CASES), "every case has an id of its own"


@pytest.mark.parametrize(("files", "args", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(world, tmp_path, monkeypatch, capsys, files, args, expected):
    if "/sys/" in " ".join(args) and not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    case = tmp_path / "case"
    case.mkdir()

    def fill(text: str) -> str:
        return text.replace("{root}", str(world)).replace("{tmp}", str(case))

    for name, content in files.items():
        path = case / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else fill(content).encode())
    before = snapshot(world, case)

    code, out, err = run_cli(monkeypatch, capsys, [fill(a) for a in args], case)

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    for part in expected:
        assert fill(part) in lines[0], lines[0]
    assert snapshot(world, case) == before


def test_bench_on_a_gpu_less_machine_names_the_available_runtimes(world, tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("every runtime is available on a GPU machine")
    code, _, err = run_cli(monkeypatch, capsys, ["bench", str(world / "ckpt"), "-r", "cuda-eager"], tmp_path)
    assert code == 2 and "not available here" in err and "onnxruntime" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_output_folder_fails_before_any_work(world, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "r.yaml").write_text(GOOD.replace("{root}", str(world)))
    locked.chmod(0o555)
    try:
        code, _, err = run_cli(monkeypatch, capsys, ["compile", "r.yaml", "-o", "locked/out"], tmp_path)
    finally:
        locked.chmod(0o755)
    assert code == 2 and f"cannot write to {locked}" in err and "loading" not in err


def test_vocab_trim_refuses_an_image_model_the_recipe_could_not_recognise(tiny_vit_dir):
    """A hub id's modality is known only once loaded: the pass itself refuses, before touching the corpus."""
    from types import SimpleNamespace

    from tokcomp.errors import TokcompError
    from tokcomp.passes.vocab_trim import VocabTrimPass
    from tokcomp.sources import load_model

    loaded = load_model(str(tiny_vit_dir))
    config = VocabTrimPass.Config.model_validate({"languages": ["en"], "corpus": ["/no/such/corpus.txt"]})
    with pytest.raises(TokcompError, match="vocab_trim applies to text / audio models; .* is a model for image"):
        VocabTrimPass().apply(loaded.model, config, SimpleNamespace(loaded=loaded))
