"""DiffRate inference: the reducer by hand, padding, export, the pass, and the published schedules."""

import math
from pathlib import Path

import pytest
import torch
import yaml

import tokcomp
from tests.conftest import state_of, tiny_bert, tiny_vision
from tokcomp.errors import RecipeError, TokcompError
from tokcomp.fileio import read_json
from tokcomp.reducers.diffrate import DiffRate, bipartite_sources, rates_from_kept
from tokcomp.surgery import capture_final_state
from tokcomp.surgery.attention import AttentionInfo

ROOT = Path(__file__).resolve().parents[1]

# Seven tokens, CLS first. CLS attention (importance) of tokens 1..6: 0.05 0.30 0.10 0.25 0.20 0.10.
# Sorted by importance: 2, 4, 5, 3, 6, 1 (stable among equals: 3 before 6).
IMPORTANCE = [0.0, 0.05, 0.30, 0.10, 0.25, 0.20, 0.10]
# Hidden states: 2 and 4 are the destinations after merging to M=3; 5 is close to 2, 3 close to 4.
X = torch.tensor([[9.0, 9.0], [1.0, 1.0], [1.0, 0.0], [0.0, 2.0], [0.0, 1.0], [3.0, 0.2], [5.0, 5.0]])


def _info(importance):
    """AttentionInfo whose cls_attention() is `importance` (normalised): key logits log(w)."""
    weights = torch.tensor(importance).clamp_min(1e-9)
    key = torch.zeros(1, 1, len(importance), 2)
    key[0, 0, :, 0] = torch.log(weights)
    query = torch.zeros(1, 1, len(importance), 2)
    query[0, 0, 0, 0] = 1.0
    return AttentionInfo(query=query, key=key, bias=None, scale=1.0)


def _diffrate(prune, merge, tokens=7, protected=1, merge_rule="importance"):
    """The reducer that keeps `prune` / `merge` of `tokens` tokens entering it (counts at that input)."""
    (rates,) = rates_from_kept([prune], [merge], tokens, protected, merge_rule)
    return DiffRate(*rates, protected, merge_rule)


def _run(prune, merge, sizes=None):
    x = X[None]
    state = state_of(torch.ones(1, 7) if sizes is None else [sizes])
    return _diffrate(prune, merge)(x, state, _info(IMPORTANCE))


def test_prune_keeps_cls_then_the_most_attended_tokens_in_order():
    out, state = _run(prune=4, merge=4)
    assert torch.equal(out[0], X[[0, 2, 4, 5]])
    assert state.source[0].argmax(-1).tolist() == [0, 2, 4, 5]


def test_prune_then_merge_hand_computed():
    # Prune to 5 (CLS, 2, 4, 5, 3); merge to 3: 5 -> its nearest of {2, 4} by cosine is 2, 3 -> 4.
    out, state = _run(prune=5, merge=3, sizes=[1, 1, 1, 1, 2, 3, 1])
    expected = torch.stack([X[0], (X[2] + 3 * X[5]) / 4, (2 * X[4] + X[3]) / 3])
    assert torch.allclose(out[0], expected)
    assert state.size[0].tolist() == [1.0, 4.0, 3.0]
    assert state.source[0].tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 1, 0],
        [0, 0, 0, 1, 1, 0, 0],
    ]


def test_merge_only_when_prune_keeps_everything():
    out, state = _run(prune=7, merge=5)
    # Sorted: 2, 4, 5, 3 | 6, 1 merge into their nearest of {2, 4, 5, 3}: 6=[5,5] -> 3? cos(6,3)=0.707,
    # cos(6,2)=0.707, cos(6,4)=0.707, cos(6,5)=0.77 -> 5; 1=[1,1] -> 5 as well.
    assert state.size[0].tolist() == [1.0, 1.0, 1.0, 3.0, 1.0]
    assert torch.allclose(out[0, 3], (X[5] + X[6] + X[1]) / 3)


def test_kept_tokens_is_the_min_of_both_counts_and_scales_with_the_input():
    reducer = _diffrate(150, 120, tokens=197)
    assert reducer.kept_tokens(197) == 120
    # a half-size input (99 tokens, 98 reducible): pruning removes round(47 * 98 / 196) = 24 (halves
    # round up), merging round(30 * 74 / 149) = 15 of the 74 reducible tokens left
    assert reducer.kept_tokens(99) == 99 - 24 - 15
    assert _diffrate(90, 120, tokens=197).kept_tokens(197) == 90
    assert _diffrate(1, 5, tokens=7).kept_tokens(7) == 2  # at least one token besides the protected stays


@pytest.mark.parametrize("merge_rule", ["importance", "bipartite"])
def test_distillation_token_is_kept_and_never_a_destination(merge_rule):
    model = tiny_vision("deit")  # 66 tokens: CLS, distillation token and 8 x 8 patches
    schedule = {"prune": [66, 40, 30, 20], "merge": [66, 30, 20, 12]}
    tokcomp.apply(model, [{"type": "diffrate", "schedule": schedule, "merge_rule": merge_rule}])
    with torch.no_grad(), capture_final_state(model, trace_source=True) as states:
        model(pixel_values=torch.randn(2, 3, 32, 32))
    source = states[0].source
    assert source.shape[1] == 12
    assert source[:, 0, 0].eq(1).all() and source[:, 0].sum(-1).eq(1).all()  # CLS alone
    assert source[:, 1, 1].eq(1).all() and source[:, 1].sum(-1).eq(1).all()  # distillation token alone


@pytest.mark.parametrize("merge_rule", ["importance", "bipartite"])
def test_padding_never_leaks_into_real_tokens(merge_rule):
    """Changing the padded positions must change no real token; real tokens keep all their mass."""
    model = tiny_bert()
    schedule = {"prune": [16, 12, 9], "merge": [16, 10, 7]}
    tokcomp.apply(model, [{"type": "diffrate", "schedule": schedule, "merge_rule": merge_rule}], sequence_length=16)
    ids = torch.randint(5, 200, (2, 16))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0
    other = ids.clone()
    other[:, 9:] = torch.randint(5, 200, (2, 7))
    with torch.no_grad(), capture_final_state(model) as states:
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=other, attention_mask=mask).last_hidden_state
    sa, sb = states
    assert a.shape[1] == 7  # the batch is as long as a 16-token sample needs
    assert torch.equal(sa.real, sb.real)
    real = sa.real
    assert (a[real] - b[real]).abs().max().item() <= 1e-5
    # The 9-token samples keep the schedule's share of their own tokens, as when run alone.
    with torch.no_grad():
        alone = model(input_ids=ids[:, :9]).last_hidden_state
    assert sa.real.sum(-1).tolist() == [alone.shape[1]] * 2
    assert (a[:, : alone.shape[1]] - alone).abs().max().item() <= 1e-5


def test_reduced_model_exports_with_static_shapes():
    model = tiny_vision("vit")
    tokcomp.apply(model, [{"type": "diffrate", "schedule": {"prune": [65, 50, 40, 30], "merge": [65, 45, 30, 20]}}])
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (), {"pixel_values": x})
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("scatter_reduce" in op for op in ops)
    with torch.no_grad():
        assert torch.allclose(program.module()(pixel_values=x).logits, model(pixel_values=x).logits, atol=1e-5)


def test_schedule_errors_name_the_key():
    def check(schedule, *parts):
        with pytest.raises(RecipeError) as err:
            tokcomp.apply(tiny_vision("vit"), [{"type": "diffrate", "schedule": schedule}])
        for part in parts:
            assert part in str(err.value)

    check({"prune": [65, 50, 40], "merge": [65, 45, 30]}, "3 values", "4 blocks")
    check({"prune": [65, 50, 40, 1], "merge": [65, 45, 30, 20]}, "schedule.prune[3] = 1", "protected")
    check({"prune": [65, 50, 40, 30], "merge": [65, 45]}, "schedule.prune has 4 values but schedule.merge has 2")
    with pytest.raises(RecipeError, match="reduces tokens in block"):
        tokcomp.apply(
            tiny_vision("vit"),
            [
                {
                    "type": "diffrate",
                    "schedule": {"prune": [65, 50, 40, 30], "merge": [65, 45, 30, 20]},
                    "ignore": ["vit.layers.1"],
                }
            ],
        )
    with pytest.raises(RecipeError, match="epochs only apply to a search"):
        tokcomp.apply(
            tiny_vision("vit"), [{"type": "diffrate", "schedule": {"prune": [65] * 4, "merge": [65] * 4}, "epochs": 2}]
        )
    with pytest.raises(RecipeError, match="exactly one of 'target_flops'"):
        tokcomp.apply(tiny_vision("vit"), [{"type": "diffrate"}])


def test_search_without_data_names_the_fix():
    with pytest.raises(tokcomp.errors.TokcompError, match="needs calibration data"):
        tokcomp.apply(tiny_vision("vit"), [{"type": "diffrate", "target_flops": 0.7}])


def test_checkpoint_reloads_the_same_model(tmp_path, tiny_vit_dir):
    recipe = {
        "model": str(tiny_vit_dir),
        "passes": [{"type": "diffrate", "schedule": {"prune": [65, 60, 40, 30], "merge": [65, 50, 35, 20]}}],
        "evaluation": {"data": "zoo:imagenet", "samples": 2, "batch_size": 2, "random_baseline": False},
    }
    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    state = read_json(out / "tokcomp.json")
    meta = state["passes"][0]["metadata"]
    assert meta["prune_kept"] == [65, 60, 40, 30] and meta["merge_kept"] == [65, 50, 35, 20]
    assert state["tokens_per_layer"] == [65, 50, 35, 20]
    reloaded = tokcomp.load(out)
    fresh = tokcomp.apply(_vit_from(tiny_vit_dir), recipe["passes"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=x).logits, fresh(pixel_values=x).logits)


# ---------------------------------------------------------------- published schedules

PUBLISHED = [
    ("diffrate_deit_s_2.9.yaml", 384, 4.599, 2.905),
    ("diffrate_deit_s_2.3.yaml", 384, 4.599, 2.327),
    ("diffrate_deit_b_11.5.yaml", 768, 17.564, 11.517),
    ("diffrate_deit_b_8.7.yaml", 768, 17.564, 8.731),
]


@pytest.fixture(scope="module")
def deit_shaped_dirs(tmp_path_factory):
    """ViTForImageClassification folders shaped like DeiT-S / DeiT-B (1000 labels, random weights)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    dirs = {}
    for hidden in (384, 768):
        folder = tmp_path_factory.mktemp(f"deit{hidden}")
        config = ViTConfig(
            hidden_size=hidden, num_hidden_layers=12, num_attention_heads=hidden // 64,
            intermediate_size=4 * hidden, image_size=224, patch_size=16, num_labels=1000,
        )  # fmt: skip
        config.architectures = ["ViTForImageClassification"]
        with torch.device("meta"):  # skip the slow default init: any finite weights will do
            model = ViTForImageClassification(config)
        model = model.to_empty(device="cpu")
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.02, generator=generator)
        model.save_pretrained(folder)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
        dirs[hidden] = folder
    return dirs


@pytest.mark.slow
@pytest.mark.parametrize(("recipe_file", "hidden", "original", "compressed"), PUBLISHED)
def test_published_schedules_reproduce_diffrate_gmacs(
    recipe_file, hidden, original, compressed, deit_shaped_dirs, tmp_path
):
    recipe = yaml.safe_load((ROOT / "recipes" / recipe_file).read_text())
    recipe["model"] = str(deit_shaped_dirs[hidden])  # the recipe names the hub model; same shapes, offline
    recipe["evaluation"] = {"data": "zoo:imagenet", "samples": 1, "batch_size": 1, "random_baseline": False}
    out = tokcomp.compile(recipe, tmp_path / "ckpt")
    flops = read_json(out / "report.json")["flops"]
    assert round(flops["original"], 3) == original
    assert round(flops["compressed"], 3) == compressed
    schedule = recipe["passes"][0]["schedule"]
    tokens = read_json(out / "report.json")["tokens_per_layer"]["compressed"]
    expected, current = [], 197
    for p, m in zip(schedule["prune"], schedule["merge"], strict=True):
        current = min(current, p, m)
        expected.append(current)
    assert tokens == expected


# ---------------------------------------------------------------- helpers



def _vit_from(folder):
    from transformers import ViTForImageClassification

    return ViTForImageClassification.from_pretrained(folder).eval()


def test_candidate_grid_reaches_the_published_minimum():
    # 197 tokens at granularity 4: candidates 196, 192, ..., 4 non-CLS tokens; 49 of them.
    from tokcomp.calibrate import candidate_counts

    counts = candidate_counts(197, 1, 4)
    assert counts[0] == 196 and counts[-1] == 4 and len(counts) == math.ceil(196 / 4)


# ---------------------------------------------------------------- the bipartite merge rule


def test_bipartite_rule_is_tome_matching_over_the_importance_order():
    """merge_rule bipartite = prune by importance, then ToMe's matching (hidden states) on the sorted tokens."""
    from tokcomp.reducers.transform import TokenTransform

    order = [0, 2, 4, 5, 3, 6, 1]  # CLS, then by importance (see IMPORTANCE)
    size = torch.tensor([[1.0, 1, 1, 2, 1, 3, 1]])
    state = state_of(size)
    out, merged = _diffrate(7, 5, merge_rule="bipartite")(X[None], state, _info(IMPORTANCE))
    sorted_state = state.gather(torch.tensor([order]))
    tome = TokenTransform(rates_from_kept([7], [5], 7, 1, "bipartite")[0][1], 1, k=1, selection="alternating", metric="hidden")
    want, want_state = tome(X[None][:, order], sorted_state, _info(IMPORTANCE))
    assert torch.allclose(out, want) and torch.equal(merged.size, want_state.size)
    assert torch.equal(merged.source, want_state.source)
    assert merged.size.sum() == size.sum()  # mass conserved


def test_bipartite_rule_floor_and_schedule_check():
    # 7 tokens, CLS protected: only the A tokens at sorted positions 2, 4, 6 can merge.
    assert bipartite_sources(7, 1) == 3 and bipartite_sources(66, 2) == 32
    assert _diffrate(7, 2, merge_rule="bipartite").kept_tokens(7) == 4
    assert _diffrate(7, 2).kept_tokens(7) == 2
    with pytest.raises(TokcompError, match="merge_rule"):
        _diffrate(7, 5, merge_rule="nearest")
    model = tiny_vision("dinov2")  # 65 tokens
    schedule = {"prune": [65, 60, 40, 30], "merge": [65, 50, 30, 10]}  # 30 tokens keep >= 16
    with pytest.raises(RecipeError, match=r"merge\[3\] = 10.*keeps at least 16") as info:
        tokcomp.apply(model, [{"type": "diffrate", "schedule": schedule, "merge_rule": "bipartite"}])
    assert "merge_rule: importance" in info.value.hint
