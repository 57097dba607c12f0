"""The X' = T X reducer family: Token Transforming, exclusive merging, pruning, EViT.

The special-case equalities of the framing are tested exactly: Token Transforming with
k = 1 (or temperature -> 0) is ToMe (alternating targets) or exclusive merging (CLS
attention targets); all-zero shares give pruning.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tokcomp
from tests.conftest import rate_at, state_of, tiny_bert, tiny_vision
from tokcomp.errors import RecipeError, TokcompError
from tokcomp.passes.context import PassContext
from tokcomp.pipeline import run_passes
from tokcomp.recipe import load_recipe, parse_pass_list
from tokcomp.reducers.apply import merge, select
from tokcomp.reducers.evit import EViT
from tokcomp.reducers.prune import ClassAttentionPrune
from tokcomp.reducers.ranking import keep_most_important
from tokcomp.reducers.tome import ToMe
from tokcomp.reducers.transform import TokenTransform, soft_assignment
from tokcomp.surgery import capture_final_state, find_adapter, token_blocks
from tokcomp.surgery.attention import AttentionInfo

FAMILY_PASSES = [
    {"type": "token_transform"},
    {"type": "token_transform", "target_selection": "alternating", "metric": "keys", "k": 3},
    {"type": "token_transform", "target_selection": "cls_attention", "metric": "keys", "k": 4, "temperature": 0.1},
    {"type": "prune"},
    {"type": "evit"},
    {"type": "zero_tprune"},
    {"type": "tome", "matching": "greedy"},
    {"type": "tome", "matching": "greedy", "merge": "norm_preserving"},
]


def _ids(spec):
    return "-".join(str(v) for v in spec.values())


def _inputs(batch=3, tokens=15, channels=6, padding=False, integer=False, protected=1):
    """Random tokens, keys, sizes 1..3 and a source map; integer x makes every sum exact.

    With `padding`, samples 0 and 1 end in padding (real tokens first, the state's invariant).
    """
    x = torch.randint(-8, 9, (batch, tokens, channels)).float() if integer else torch.randn(batch, tokens, channels)
    real = None
    if padding:
        real = torch.ones(batch, tokens, dtype=torch.bool)
        real[0, tokens - 4 :] = False
        real[1, 5:] = False
    state = state_of(torch.randint(1, 4, (batch, tokens)).float(), real, protected)
    key = torch.randn(batch, 2, tokens, 4)
    bias = None if real is None else torch.where(real, 0.0, torch.finfo(x.dtype).min)[:, None, None, :]
    return x, state, AttentionInfo(query=key, key=key, bias=bias, scale=0.5)


def _assert_same(a, b, exact=True):
    """Same tokens, sizes, flags and source maps on the real rows (padding rows may hold anything)."""
    (xa, sa), (xb, sb) = a, b
    assert xa.shape == xb.shape
    assert (sa.real is None) == (sb.real is None)
    if sa.real is not None:
        assert torch.equal(sa.real, sb.real)
    keep = sa.real if sa.real is not None else torch.ones(xa.shape[:2], dtype=torch.bool)
    if exact:
        assert torch.equal(xa[keep], xb[keep])
    else:
        assert (xa[keep] - xb[keep]).abs().max().item() <= 1e-5
    assert torch.equal(sa.size[keep], sb.size[keep])
    assert torch.equal(sa.protected, sb.protected)
    assert torch.equal(sa.position[keep], sb.position[keep])
    assert torch.equal(sa.source[keep], sb.source[keep])


# ------------------------------------------------------------------ special cases of T


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("protected", [1, 2])
@pytest.mark.parametrize("tokens,r", [(15, 1), (15, 4), (16, 7), (16, 20)])
def test_k1_with_alternating_targets_on_keys_is_tome_exactly(tokens, r, protected, padding):
    """Same merges, same output order, same sizes and source map; x bit-identical (integer inputs)."""
    x, state, info = _inputs(tokens=tokens, padding=padding, integer=True, protected=protected)
    rate = rate_at(r, tokens, protected)
    expected = ToMe(rate, protected)(x, state, info)
    for temperature in (1.0, 0.01):
        tt = TokenTransform(rate, protected, k=1, temperature=temperature, selection="alternating", metric="keys")
        _assert_same(expected, tt(x, state, info))


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("selection", ["alternating", "cls_attention"])
def test_zero_temperature_limit_is_exclusive_merging(selection, padding):
    """k = 3 with temperature -> 0 puts each token wholly on its best target (the k = 1 merge)."""
    x, state, info = _inputs(tokens=17, integer=True, padding=padding)
    rate = rate_at(5, 17)
    hard = TokenTransform(rate, 1, k=1, selection=selection)(x, state, info)
    cold = TokenTransform(rate, 1, k=3, temperature=1e-8, selection=selection)(x, state, info)
    _assert_same(hard, cold)
    warm = TokenTransform(rate, 1, k=3, temperature=0.5, selection=selection)(x, state, info)
    assert not torch.equal(hard[1].size, warm[1].size)  # a real temperature does spread mass


@pytest.mark.parametrize("padding", [False, True])
def test_all_zero_shares_are_pruning(padding):
    """T with one-hot selection rows and no shares keeps the selected rows exactly (integer x)."""
    x, state, info = _inputs(tokens=16, padding=padding, integer=True)
    keep = 11 if state.real is None else state.real.sum(-1) - 5
    kept, order = keep_most_important(info.cls_attention(), state, keep, 11, by_position=True)
    moved = order[:, 11:]
    no_shares = torch.zeros(3, 5, 11)
    null = state.real is not None
    _assert_same(select(x, state, kept, null=null), merge(x, state, kept, moved, assignment=no_shares, null=null))


def test_the_source_map_is_t_and_x_is_the_t_weighted_mean():
    """After one reduction from an identity source map, source = T (unweighted): X' = T (w X) / T w."""
    x, state, info = _inputs(tokens=14)
    out, new = TokenTransform(rate_at(4, 14), 1, k=3, temperature=0.3)(x, state, info)
    t = new.source
    w = state.size[..., None]
    assert (out - (t @ (x * w)) / (t @ w)).abs().max().item() <= 1e-5
    assert torch.allclose(new.size, (t @ w)[..., 0])
    assert torch.allclose(t.sum(1), torch.ones(3, 14))  # every column of T sums to 1


# ------------------------------------------------------------------ soft assignment


def test_soft_assignment_hand_computed():
    scores = torch.tensor([[[0.9, 0.8, 0.1], [0.2, 0.2, 0.7]]])
    shares = soft_assignment(scores, k=2, temperature=0.1)
    e = torch.exp(torch.tensor(-1.0))
    assert torch.allclose(shares[0, 0], torch.stack([1 / (1 + e), e / (1 + e), torch.tensor(0.0)]))
    # a tie splits evenly behind the winner; k = 1 picks the lower index of a tie, like torch.max
    second = torch.exp(torch.tensor(-5.0))  # (0.2 - 0.7) / 0.1
    assert torch.allclose(shares[0, 1], torch.stack([second, torch.tensor(0.0), torch.tensor(1.0)]) / (1 + second))
    assert soft_assignment(scores, k=1, temperature=0.1)[0, 1].tolist() == [0.0, 0.0, 1.0]
    assert soft_assignment(torch.tensor([[[0.5, 0.5]]]), k=1, temperature=0.1)[0, 0].tolist() == [1.0, 0.0]


def test_forbidden_targets_get_nothing_and_nothing_is_nan():
    low = torch.finfo(torch.float32).min
    scores = torch.tensor([[[low, 0.3, low], [low, low, low]]])
    shares = soft_assignment(scores, k=3, temperature=0.01)
    assert shares[0, 0].tolist() == [0.0, 1.0, 0.0]
    assert torch.isfinite(shares).all() and torch.allclose(shares.sum(-1), torch.ones(1, 2))


@pytest.mark.parametrize("selection", ["alternating", "cls_attention"])
def test_many_to_many_conserves_mass_and_the_weighted_mean(selection):
    x, state, info = _inputs(tokens=21)
    out, new = TokenTransform(rate_at(7, 21), 1, k=4, temperature=0.5, selection=selection)(x, state, info)
    assert out.shape[1] == 14
    assert torch.allclose(new.size.sum(1), state.size.sum(1))
    assert torch.allclose(new.source.sum(1), torch.ones(3, 21))  # every input token fully accounted for
    assert (new.source > 0).sum() > (new.source.shape[0] * 21)  # and some are split over several outputs
    mean = (x * state.size[..., None]).sum(1) / state.size.sum(1, keepdim=True)
    new_mean = (out * new.size[..., None]).sum(1) / new.size.sum(1, keepdim=True)
    assert torch.allclose(mean, new_mean, atol=1e-5)


# ------------------------------------------------------------------ pruning and EViT by hand


def _cls_attention_info(logits: list[float]):
    """One head whose CLS attention is softmax(logits): key j = logits[j] * e_j, query 0 = ones."""
    n = len(logits)
    key = torch.diag(torch.tensor(logits))[None, None]
    query = torch.ones(1, 1, n, n)
    return AttentionInfo(query=query, key=key, bias=None, scale=1.0)


LOGITS = [0.0, 3.0, 1.0, 2.0, 0.5, 2.5]


def test_prune_keeps_most_attended_tokens_in_index_order():
    x = torch.arange(6 * 2, dtype=torch.float32).view(1, 6, 2)
    out, new = ClassAttentionPrune(rate_at(2, 6), 1)(x, state_of(torch.ones(1, 6)), _cls_attention_info(LOGITS))
    # CLS always; then the three highest logits: tokens 1 (3.0), 5 (2.5), 3 (2.0), in index order
    assert torch.equal(out[0], x[0, [0, 1, 3, 5]])
    assert new.source[0].argmax(-1).tolist() == [0, 1, 3, 5]


def test_evit_fuses_the_rest_by_cls_attention():
    x = torch.randn(1, 6, 3)
    sizes = torch.tensor([[1.0, 1.0, 2.0, 1.0, 3.0, 1.0]])
    out, new = EViT(rate_at(2, 6), 1)(x, state_of(sizes), _cls_attention_info(LOGITS))
    # keep 6 - 2 - 1 = 3: CLS, 1, 5; fuse 2, 3, 4 with weights a_i (sizes are already in a under
    # proportional attention, so they do not weight x again) into one token standing for 2 + 1 + 3
    a = torch.softmax(torch.tensor(LOGITS), 0)
    fused = sum(a[i] * x[0, i] for i in (2, 3, 4)) / a[[2, 3, 4]].sum()
    assert out.shape[1] == 4
    assert torch.equal(out[0, :3], x[0, [0, 1, 5]])
    assert torch.allclose(out[0, 3], fused, atol=1e-6)
    assert torch.allclose(new.size[0], torch.tensor([1.0, 1.0, 1.0, 6.0]))


def test_evit_fused_row_is_a_row_of_t():
    x = torch.randn(1, 6, 3)
    _, new = EViT(rate_at(2, 6), 1)(x, state_of(torch.ones(1, 6)), _cls_attention_info(LOGITS))
    a = torch.softmax(torch.tensor(LOGITS), 0)
    fused_row = new.source[0, 3]  # the source map is T itself after one reduction
    assert torch.equal(fused_row[[0, 1, 5]], torch.zeros(3))
    assert torch.allclose(fused_row[[2, 3, 4]] / fused_row[[2, 3, 4]].sum(), a[[2, 3, 4]] / a[[2, 3, 4]].sum())


# ------------------------------------------------------------------ in real block stacks


@pytest.mark.parametrize("spec", FAMILY_PASSES, ids=_ids)
def test_padding_never_leaks_into_real_tokens(spec):
    """Changing what sits in the padded positions must not change any real token."""
    model = tokcomp.apply(tiny_bert(), [{**spec, "r": 3}])
    ids = torch.randint(5, 200, (2, 16))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0
    other = ids.clone()
    other[:, 9:] = torch.randint(5, 200, (2, 7))
    with torch.no_grad(), capture_final_state(model) as states:
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=other, attention_mask=mask).last_hidden_state
    sa, sb = states
    assert torch.equal(sa.real, sb.real)
    real = sa.real
    assert (a[real] - b[real]).abs().max().item() <= 1e-5
    if spec["type"] not in ("prune", "zero_tprune"):  # merging and fusing keep every real token's mass
        assert torch.allclose(sa.weight().sum(1), torch.full((2,), 9.0))


@pytest.mark.parametrize("spec", FAMILY_PASSES, ids=_ids)
def test_cls_and_distillation_tokens_stay_pure(spec):
    model = tokcomp.apply(tiny_vision("deit"), [{**spec, "r": 8}])
    with torch.no_grad(), capture_final_state(model, trace_source=True) as states:
        model(pixel_values=torch.randn(2, 3, 32, 32))
    source = states[0].source
    assert torch.equal(source[:, 0], F.one_hot(torch.tensor(0), source.shape[-1]).float().expand(2, -1))
    assert torch.equal(source[:, 1], F.one_hot(torch.tensor(1), source.shape[-1]).float().expand(2, -1))


def test_equal_r_gives_equal_token_counts_across_the_family():
    """The shared cap makes FLOPs comparisons exact: same r, same tokens after every block."""
    counts = {}
    for spec in [{"type": "tome"}, *FAMILY_PASSES]:
        model = tiny_vision("dinov2")
        ctx = PassContext(find_adapter(model).default_input(model))
        record = run_passes(model, parse_pass_list([{**spec, "r": [9, 7, 7, 6]}]), ctx)[0]
        with torch.no_grad(), capture_final_state(model) as states:
            model(pixel_values=torch.randn(2, 3, 32, 32))
        assert states[0].size.shape[1] == record.metadata["tokens_per_layer"][-1]
        counts[_ids(spec)] = record.metadata["tokens_per_layer"]
    assert len({tuple(c) for c in counts.values()}) == 1, counts


def test_target_flops_resolves_like_tome():
    def r_list(kind):
        model = tiny_vision("dinov2")
        ctx = PassContext(find_adapter(model).default_input(model))
        (record,) = run_passes(model, parse_pass_list([{"type": kind, "target_flops": "-35%"}]), ctx)
        return record.metadata["r_per_layer"]

    expected = r_list("tome")
    assert all(r_list(kind) == expected for kind in ("token_transform", "prune", "evit", "zero_tprune"))


def test_token_transform_exports_with_torch_export():
    """torch.export of the many-to-many reducer on a padded batch: same numbers as eager."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.reducer = TokenTransform(rate_at(5, 17), 1, k=3, temperature=0.2)

        def forward(self, x, size, real, key):
            state = state_of(size, real, source=False)
            out, new = self.reducer(x, state, AttentionInfo(query=key, key=key, bias=None, scale=0.5))
            return out, new.size

    x, state, info = _inputs(tokens=17, padding=True)
    module = Wrapper()
    program = torch.export.export(module, (x, state.size, state.real, info.key))
    for got, expected in zip(program.module()(x, state.size, state.real, info.key), module(x, state.size, state.real, info.key)):
        assert torch.allclose(got, expected)


# ------------------------------------------------------------------ recipes, configs, checkpoints


@pytest.mark.parametrize(
    "spec,message",
    [  # fmt: skip
        ({"type": "token_transform", "r": 2, "target_selection": "cls"}, "target_selection.*'alternating' or 'cls_attention'"),
        ({"type": "token_transform", "r": 2, "metric": "x"}, "metric.*'hidden' or 'keys'"),
        ({"type": "token_transform", "r": 2, "k": 0}, r"\.k: .*greater than or equal to 1"),
        ({"type": "token_transform", "r": 2, "temperature": 0}, r"\.temperature: .*greater than 0"),
        ({"type": "prune", "r": 2, "proportional_attention": True}, "unknown key 'proportional_attention'.*valid keys"),
        ({"type": "evit", "r": 2, "kappa": 0.7}, "unknown key 'kappa'"),
        ({"type": "evit"}, "exactly one of 'r'"),
    ],
)
def test_config_errors_name_the_key_and_the_valid_values(spec, message):
    with pytest.raises(RecipeError, match=message):
        tokcomp.apply(tiny_bert(), [spec])


def test_reducer_errors_name_valid_values():
    with pytest.raises(TokcompError, match="alternating, cls_attention"):
        TokenTransform(rate_at(2, 10), 1, selection="random")
    with pytest.raises(TokcompError, match="hidden, keys"):
        TokenTransform(rate_at(2, 10), 1, metric="values")


@pytest.mark.parametrize("kind", ["token_transform", "prune", "evit", "zero_tprune"])
def test_example_recipe_parses(kind):
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / f"{kind}.yaml")
    assert [p.type for p in recipe.passes] == [kind]


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "token_transform", "target_flops": "-30%"},
        {"type": "token_transform", "r": [5, 4, 4, 3], "k": 3, "temperature": 0.05, "metric": "keys",
         "target_selection": "cls_attention", "proportional_attention": False},
        {"type": "prune", "target_flops": "-30%", "ignore": ["vit.encoder.layer.0"]},
        {"type": "evit", "r": 4, "proportional_attention": False},
        {"type": "tome", "r": [5, 4, 4, 3], "matching": "greedy", "merge": "norm_preserving"},
    ],
    ids=["token_transform-defaults", "token_transform-cls-keys", "prune", "evit", "tome-greedy-norm"],
)  # fmt: skip
def test_checkpoint_round_trip_is_exact(spec, tiny_vit_with_images, tmp_path):
    from transformers import ViTForImageClassification

    out = tmp_path / "ckpt"
    recipe = {
        "model": str(tiny_vit_with_images / "model"),
        "passes": [spec],
        "evaluation": {"data": str(tiny_vit_with_images / "images"), "samples": 4, "batch_size": 4, "random_baseline": False},
    }
    tokcomp.compile(recipe, out)
    original = ViTForImageClassification.from_pretrained(tiny_vit_with_images / "model").eval()
    in_memory = tokcomp.apply(original, [spec])
    reloaded = tokcomp.load(out)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(in_memory(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits)
    reducers = [b.reducer for b in token_blocks(reloaded)]
    assert [r.describe() if r else None for r in reducers] == [
        r.describe() if r else None for r in (b.reducer for b in token_blocks(in_memory))
    ]
