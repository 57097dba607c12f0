"""The DiffRate search: estimators, rate parameters, the search-time reducer, and the search itself."""

import pytest
import torch

import tokcomp
from tests.conftest import tiny_bert, tiny_vision
from tokcomp.analysis.flops import model_macs
from tokcomp.calibrate import RateParameters, SearchSettings, candidate_counts, search_rates
from tokcomp.calibrate.loss import resolve_loss
from tokcomp.calibrate.rates import centred_logits
from tokcomp.calibrate.soft_reducer import SearchTrace, SoftDiffRate
from tokcomp.calibrate.ste import cap, ceil_ste, hard_with_soft_gradient, min_ste
from tokcomp.errors import TokcompError
from tokcomp.passes.diffrate import _reducers
from tokcomp.reducers.diffrate import bipartite_sources
from tokcomp.passes.token_reduction import BlockSite, geometry_of
from tokcomp.surgery.adapters.base import InputSpec

# ---------------------------------------------------------------- estimators


def test_straight_through_estimators():
    x = torch.tensor([2.3, 4.0], requires_grad=True)
    y = ceil_ste(x)
    assert y.tolist() == [3.0, 4.0]  # exact integers forward
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]

    a, b = torch.tensor(5.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    m = min_ste(a, b)
    m.backward()
    assert m.item() == 3.0 and a.grad.item() == 1.0 and b.grad.item() == 1.0  # both ops feel the budget

    a, limit = torch.tensor(5.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)
    c = cap(a, limit)
    c.backward()
    assert c.item() == 3.0 and a.grad.item() == 1.0 and limit.grad is None  # no push on earlier layers

    soft = torch.tensor([0.9, 0.2], requires_grad=True)
    mask = hard_with_soft_gradient(torch.tensor([1.0, 0.0]), soft)
    assert mask.tolist() == [1.0, 0.0]
    (mask * torch.tensor([2.0, 3.0])).sum().backward()
    assert soft.grad.tolist() == [2.0, 3.0]


def test_candidates_and_centred_start():
    assert candidate_counts(17, 1, 4) == [16, 12, 8, 4]
    assert candidate_counts(18, 2, 5) == [16, 11, 6, 1]
    counts = torch.tensor(candidate_counts(257, 1, 4), dtype=torch.float32)
    for expected in (20.0, 128.5, 250.0):
        probs = centred_logits(counts, expected, width=32.0).softmax(0)
        assert abs((probs * counts).sum().item() - expected) < 1e-3


def test_rate_plan_masks_counts_and_monotone_schedule():
    rates = RateParameters(layers=3, input_tokens=17, protected=1, granularity=4, initial=([17, 9, 13], [15, 7, 3]))
    plan = rates()
    # Expected counts ceil to whole tokens; prune is capped by the tokens entering; merge by prune.
    prune, merge = rates.read_out()
    assert all(a >= b for a, b in zip(prune, merge, strict=True))
    assert all(a >= b for a, b in zip(merge, merge[1:], strict=False))  # never increasing with depth
    assert prune[1] <= merge[0] and prune[2] <= merge[1]
    for layer in range(3):
        assert plan.prune_mask[layer].tolist() == [1.0] * prune[layer] + [0.0] * (17 - prune[layer])
        assert plan.merge_mask[layer].tolist() == [1.0] * merge[layer] + [0.0] * (17 - merge[layer])
    # The masks carry gradient to the logits; the token counts carry the FLOPs gradient.
    (plan.prune_mask.sum() + plan.merge_mask.sum() + plan.tokens.sum()).backward()
    assert rates.prune_logits.grad.abs().sum() > 0 and rates.merge_logits.grad.abs().sum() > 0


# ---------------------------------------------------------------- the search-time reducer


def _install_search(model, rates, proportional=True, merge_rule="importance"):
    site = BlockSite.prepare(model, "diffrate")
    trace = SearchTrace()
    for i, block in enumerate(site.blocks[1:]):
        block.reducer = SoftDiffRate(i, trace, site.protected, proportional, merge_rule)
    for block in site.blocks:
        block.proportional_attention = True
    return site, trace


def _outputs(model, x):
    """What the model delivers: the class logits (DeiT) or the CLS embedding (DINOv2)."""
    out = model(pixel_values=x)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state[:, 0]


@pytest.mark.parametrize("kind", ["dinov2", "deit"])
@pytest.mark.parametrize("merge_rule", ["importance", "bipartite"])
@pytest.mark.parametrize("proportional", [True, False])
def test_search_forward_at_the_read_out_equals_the_compiled_model(proportional, merge_rule, kind):
    """The search optimises the model it delivers: masked tokens in place == tokens removed."""
    model = tiny_vision(kind)
    tokens = 65 if kind == "dinov2" else 66
    # The last merge count sits below the bipartite floor there: the read-out must apply it.
    protected = 2 if kind == "deit" else 1  # DeiT's distillation token
    rates = RateParameters(3, tokens, protected, 4, ([50, 40, 30], [44, 30, 12]), merge_rule)
    site, trace = _install_search(model, rates, proportional, merge_rule)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        trace.begin(rates())
        searched = _outputs(model, x)
        prune, merge = rates.read_out()
        reducers = _reducers([tokens, *prune], [tokens, *merge], site.protected, tokens, merge_rule)
        site.install(reducers, proportional)
        compiled = _outputs(model, x)
    assert merge[-1] < prune[-1] < tokens  # both pruning and merging happen
    if merge_rule == "bipartite":
        assert merge[-1] == prune[-1] - bipartite_sources(prune[-1], site.protected)  # the floor binds
    assert (searched - compiled).abs().max().item() < 1e-4


@pytest.mark.parametrize("merge_rule", ["importance", "bipartite"])
def test_search_reducer_respects_padding(merge_rule):
    """Padding ranks last and never carries weight: the search output ignores padded content."""
    model = tiny_bert()
    rates = RateParameters(2, 16, 1, 2, initial=([12, 9], [10, 7]), merge_rule=merge_rule)
    site, trace = _install_search(model, rates, merge_rule=merge_rule)
    ids = torch.randint(5, 200, (2, 16))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0
    other = ids.clone()
    other[:, 9:] = torch.randint(5, 200, (2, 7))
    with torch.no_grad():
        trace.begin(rates())
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights_a = trace.pooling_weights()
        trace.begin(rates())
        b = model(input_ids=other, attention_mask=mask).last_hidden_state
    kept = weights_a > 0
    assert torch.allclose(a[kept], b[kept], atol=1e-5)
    assert weights_a[:, 9:].eq(0).all()  # padding carries no weight
    # The 9 real tokens keep the schedule's share of themselves (counts refer to 16 real tokens).
    assert ((weights_a > 0).sum(1) < 9).all()


def test_wrong_input_size_is_an_error():
    model = tiny_vision("dinov2")
    rates = RateParameters(3, 65, 1, 4)
    _, trace = _install_search(model, rates)
    trace.begin(rates())
    with pytest.raises(TokcompError, match="calibration inputs have 17 tokens"):
        model(pixel_values=torch.randn(1, 3, 16, 16))


# ---------------------------------------------------------------- the search


def _search(seed=0, target=0.6, epochs=3, kind="dinov2"):
    torch.manual_seed(seed)
    model = tiny_vision(kind)
    site = BlockSite.prepare(model, "diffrate")
    geometry = geometry_of(model, InputSpec("image", image_size=32))
    original = model_macs(geometry, [geometry.input_tokens] * geometry.num_layers)
    generator = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(8, 3, 32, 32, generator=generator)} for _ in range(4)]
    settings = SearchSettings(target_macs=int(original * target), epochs=epochs, lr=0.05)
    result = search_rates(
        model, site.blocks, [False, True, True, True], site.protected, geometry, batches, settings, "cls", seed
    )
    return result, original, model


def test_search_lands_on_target_and_is_repeatable():
    first, original, model = _search()
    second, _, _ = _search()
    assert abs(first.achieved_macs - first.target_macs) / first.target_macs <= 0.02
    assert (first.prune_kept, first.merge_kept) == (second.prune_kept, second.merge_kept)
    assert first.prune_kept[0] == first.merge_kept[0] == 65  # block 0 never compresses
    assert all(p >= m for p, m in zip(first.prune_kept, first.merge_kept, strict=True))
    assert first.loss == "cosine" and len(first.epochs) == 3
    # The search leaves the model as it found it: no reducers, weights trainable again.
    site = BlockSite.prepare(model, "check")
    assert all(block.reducer is None for block in site.blocks)
    assert all(p.requires_grad for p in model.parameters())


def test_search_weights_stay_frozen_and_only_rates_learn():
    model = tiny_vision("vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    site = BlockSite.prepare(model, "diffrate")
    geometry = geometry_of(model, InputSpec("image", image_size=32))
    original = model_macs(geometry, [65] * 4)
    batches = [{"pixel_values": torch.randn(4, 3, 32, 32)}]
    result = search_rates(
        model,
        site.blocks,
        [False, True, True, True],
        1,
        geometry,
        batches,
        SearchSettings(target_macs=int(original * 0.7), epochs=2),
        "cls",
    )
    assert result.loss == "kl"  # a classifier distils its logits
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unreachable_target_is_an_error():
    with pytest.raises(TokcompError, match="outside what the searched blocks can reach"):
        _search(target=0.05, epochs=1)


def test_loss_choice_errors_name_the_fix():
    assert resolve_loss("auto", has_logits=True, has_labels=False) == "kl"
    assert resolve_loss("auto", has_logits=False, has_labels=False) == "cosine"
    with pytest.raises(TokcompError, match="loss 'kl' needs a classifier"):
        resolve_loss("kl", has_logits=False, has_labels=True)
    with pytest.raises(TokcompError, match="loss 'ce' needs labeled calibration data"):
        resolve_loss("ce", has_logits=True, has_labels=False)


# ---------------------------------------------------------------- end to end through a recipe



def test_compile_searches_and_records_the_schedule(tiny_vit_dir, tmp_path):
    from tokcomp.fileio import read_json

    recipe = {
        "model": str(tiny_vit_dir),
        "passes": [{"type": "diffrate", "target_flops": 0.6, "epochs": 2, "lr": 0.05}],
        "calibration": {"data": "zoo:imagenet+cifar10", "samples": 24, "batch_size": 8, "augment": True},
        "evaluation": {"data": "zoo:skimage", "samples": 4, "batch_size": 4, "random_baseline": False},
    }
    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    state, report = read_json(out / "tokcomp.json"), read_json(out / "report.json")
    meta = state["passes"][0]["metadata"]
    assert state["tokens_per_layer"] == meta["merge_kept"]
    search = report["diffrate"]
    assert search["calibration"] == {"data": "zoo:imagenet+cifar10", "samples": 24, "augment": True}
    assert search["settings"]["epochs"] == 2 and search["settings"]["lambda"] == 100.0
    assert abs(report["flops"]["ratio"] - 0.6) <= 0.02 * 0.6
    from tokcomp.surgery import token_blocks

    # The bipartite rule (default) searches block 0 too; a block that keeps every token has no reducer.
    reloaded = [b.reducer for b in token_blocks(tokcomp.load(out))]
    entering = [65, *meta["merge_kept"][:-1]]
    for reducer, prune, merge, tokens in zip(reloaded, meta["prune_kept"], meta["merge_kept"], entering, strict=True):
        assert (reducer is None) == (min(prune, merge) >= tokens)
        assert reducer is None or (reducer.kind, reducer.kept_tokens(tokens)) == ("diffrate", min(tokens, prune, merge))
    # The start shapes and the per-epoch read-out scores are reported; the kept counts score best.
    chosen = [c for c in search["start"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["score"] == min(c["score"] for c in search["start"])
    target = search["target_gmacs"]
    scores = {"start": chosen[0]["score"]}
    for epoch in search["epochs"]:
        if abs(epoch["read_out_gmacs"] - target) <= 0.01 * target:  # read-outs off the target are not eligible
            scores[f"epoch {epoch['epoch']}"] = epoch["score"]
    assert search["kept"] in scores and scores[search["kept"]] == min(scores.values())


def test_compile_with_labels_and_cross_entropy(tiny_vit_dir, tmp_path):
    """loss: ce trains on the data's labels (an image folder with class sub-folders)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("0", "1"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "images" / cls / f"{i}.png"
            )
    recipe = {
        "model": str(tiny_vit_dir),
        "passes": [{"type": "diffrate", "target_flops": 0.7, "epochs": 1, "loss": "ce"}],
        "calibration": {"data": str(tmp_path / "images"), "samples": 8, "batch_size": 4},
        "evaluation": {"data": "zoo:skimage", "samples": 2, "batch_size": 2, "random_baseline": False},
    }
    from tokcomp.fileio import read_json

    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    assert read_json(out / "report.json")["diffrate"]["loss"] == "ce"


def test_forward_loop_opt_in(tiny_vit_dir, tmp_path):
    """A user loop named in the recipe feeds the search; its inputs are recorded once and replayed."""
    loop = tmp_path / "calib.py"
    loop.write_text(
        "import torch\n"
        "CALLS = []\n"
        "def run(model):\n"
        "    for i in range(3):\n"
        "        out = model(pixel_values=torch.randn(4, 3, 32, 32))\n"
        "        CALLS.append(out.logits.shape)\n"
    )
    recipe = {
        "model": str(tiny_vit_dir),
        "passes": [{"type": "diffrate", "target_flops": 0.7, "epochs": 2}],
        "calibration": {"forward_loop": f"{loop}:run"},
        "evaluation": {"data": "zoo:skimage", "samples": 2, "batch_size": 2, "random_baseline": False},
    }
    from tokcomp.fileio import read_json

    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    search = read_json(out / "report.json")["diffrate"]
    assert search["calibration"]["samples"] == 12 and search["steps"] == 6
    recipe["calibration"] = {"forward_loop": f"{tmp_path / 'missing.py'}:run"}
    with pytest.raises(TokcompError, match="forward_loop file .* not found"):
        tokcomp.compile(recipe, tmp_path / "ckpt2")
    recipe["calibration"] = {"forward_loop": f"{loop}:nope"}
    with pytest.raises(TokcompError, match="defines no function 'nope'"):
        tokcomp.compile(recipe, tmp_path / "ckpt3")


@pytest.mark.slow
def test_minilm_search_on_text_lands_on_target(tmp_path):
    """A real sentence encoder (BERT family, mean pooling, padding) through the full compile."""
    from tokcomp.fileio import read_json

    recipe = {
        "model": {"source": "zoo:minilm-l6", "sequence_length": 32},
        "passes": [{"type": "diffrate", "target_flops": "-40%", "epochs": 2, "lr": 0.05}],
        "calibration": {"data": "zoo:text", "samples": 48, "batch_size": 16},
        "evaluation": {"data": "zoo:text:german", "samples": 16, "random_baseline": False},
    }
    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    report = read_json(out / "report.json")
    assert report["diffrate"]["loss"] == "cosine"
    assert abs(report["flops"]["ratio"] - 0.6) <= 0.02 * 0.6
    assert report["fidelity"]["cosine_mean"] > 0.5


def test_bipartite_floor_holds_and_passes_the_flops_gradient_to_pruning():
    """Of 30 sorted tokens only the 14 unprotected A tokens (even positions 2..28) can merge: 16 stay."""
    rates = RateParameters(1, 33, 1, 1, initial=([30.0], [5.0]), merge_rule="bipartite")
    plan = rates()
    prune, merge = rates.read_out()
    assert prune == [30] and merge == [prune[0] - bipartite_sources(prune[0], 1)] == [16]
    plan.tokens.sum().backward()  # the FLOPs gradient of the count
    assert rates.prune_logits.grad.abs().sum() > 0  # reaches pruning through the floor
    assert rates.merge_logits.grad.abs().sum() == 0  # merging cannot lower the count further
