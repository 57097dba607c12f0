"""ToMe bipartite soft matching against hand-computed examples, and its invariants."""

import torch
import torch.nn.functional as F

import tokcomp
from tests.conftest import rate_at, state_of, tiny_bert, tiny_vision
from tokcomp.reducers.rate import Rate
from tokcomp.reducers.schedule import inflect_schedule
from tokcomp.reducers.tome import ToMe
from tokcomp.surgery.attention import AttentionInfo

# Six tokens, CLS first. Metric (keys, one head):
#   A = tokens 0, 2, 4;  B = tokens 1, 3, 5
#   A1=[0,1] best B1=[0,1] (1.0);  A2=[.6,.8] best B1 (0.8);  CLS never a source.
METRIC = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])


def _run(r, sizes=None, protected=1):
    x = torch.arange(6 * 3, dtype=torch.float32).view(1, 6, 3)
    state = state_of(torch.ones(1, 6) if sizes is None else [sizes], protected=protected)
    key = METRIC[None, None]  # [B, H=1, N, d]
    info = AttentionInfo(query=key, key=key, bias=None, scale=1.0)
    return x, ToMe(rate_at(r, 6, protected), protected)(x, state, info)


def test_tome_r2_hand_computed():
    x, (out, state) = _run(2)
    # Output order: unmerged A (CLS) then all of B: [0], [1], [2+3+4], [5]
    expected = torch.stack([x[0, 0], x[0, 1], x[0, [2, 3, 4]].mean(0), x[0, 5]])
    assert torch.allclose(out[0], expected)
    assert state.size[0].tolist() == [1.0, 1.0, 3.0, 1.0]
    assert state.source[0].tolist() == [
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


def test_tome_r1_keeps_unmerged_a_in_index_order():
    x, (out, state) = _run(1)
    # Only A1 (token 2) merges into B1 (token 3); A keeps [0, 4] in order, then B.
    expected = torch.stack([x[0, 0], x[0, 4], x[0, 1], x[0, [2, 3]].mean(0), x[0, 5]])
    assert torch.allclose(out[0], expected)
    assert state.size[0].tolist() == [1.0, 1.0, 1.0, 2.0, 1.0]


def test_tome_size_weighted_average():
    x, (out, state) = _run(2, sizes=[1, 1, 2, 1, 3, 1])
    expected = (2 * x[0, 2] + 1 * x[0, 3] + 3 * x[0, 4]) / 6
    assert torch.allclose(out[0, 2], expected)
    assert state.size[0].tolist() == [1.0, 1.0, 6.0, 1.0]


def test_norm_preserving_merge_rescales_merged_tokens_only():
    x = torch.arange(6 * 3, dtype=torch.float32).view(1, 6, 3)
    sizes = torch.tensor([[1.0, 1, 2, 1, 3, 1]])
    key = METRIC[None, None]
    info = AttentionInfo(query=key, key=key, bias=None, scale=1.0)
    plain, plain_state = ToMe(rate_at(2, 6), 1)(x, state_of(sizes), info)
    kept, state = ToMe(rate_at(2, 6), 1, merge="norm_preserving")(x, state_of(sizes), info)
    assert torch.equal(state.size, plain_state.size) and torch.equal(state.source, plain_state.source)
    # row 2 is tokens 2 + 3 + 4: the plain mean's direction, at the size-weighted mean of their norms
    norms = x[0, [2, 3, 4]].norm(dim=-1)
    expected_norm = (2 * norms[0] + 1 * norms[1] + 3 * norms[2]) / 6
    assert torch.allclose(kept[0, 2].norm(), expected_norm)
    assert torch.allclose(F.normalize(kept[0, 2], dim=0), F.normalize(plain[0, 2], dim=0))
    assert kept[0, 2].norm() > plain[0, 2].norm()
    assert torch.allclose(kept[0, [0, 1, 3]], plain[0, [0, 1, 3]])  # rows that merged nothing keep their value


def test_tome_protects_distillation_token_as_destination():
    # With B0 (token 1) protected, A1 and A2 still pick B1; make A2 prefer B0 to check it is refused.
    metric = METRIC.clone()
    metric[4] = torch.tensor([1.0, 0.05])
    x = torch.randn(1, 6, 3)
    key = F.normalize(metric, dim=-1)[None, None]
    info = AttentionInfo(query=key, key=key, bias=None, scale=1.0)
    _, free = ToMe(rate_at(2, 6, 1), 1)(x, state_of(torch.ones(1, 6), protected=1), info)
    _, kept = ToMe(rate_at(2, 6, 2), 2)(x, state_of(torch.ones(1, 6), protected=2), info)
    assert free.source[0, 1].sum() == 2  # token 4 merged into token 1 when unprotected
    assert kept.source[0, 1].tolist() == [0, 1, 0, 0, 0, 0]  # distillation token stays pure


def test_tome_clamps_r_to_half_the_unprotected_tokens():
    assert ToMe(Rate(100, 196), protected=1).kept_tokens(197) == 197 - 98
    assert ToMe(Rate(100, 196), protected=2).kept_tokens(198) == 198 - 98
    assert ToMe(Rate(0, 9), protected=1).kept_tokens(10) == 10


def test_rate_reproduces_the_reference_count_and_scales_with_the_input():
    rate = Rate(16, 196)  # r = 16 of DeiT's 197 tokens (CLS protected)
    assert rate.of(196) == 16
    assert [rate.of(n) for n in (0, 6, 98, 392)] == [0, 0, 8, 32]  # round(16 n / 196), halves up
    per_sample = rate.of(torch.tensor([196, 98, 6]))
    assert per_sample.tolist() == [16, 8, 0]
    assert ToMe(rate, 1).kept_tokens(197) == 181
    assert ToMe(rate, 1).kept_tokens(99) == 91  # a half-size input loses half as many tokens


def test_inflect_schedule_matches_tome_definition():
    assert inflect_schedule(16, -1, 12) == [int(32 - i * 32 / 11) for i in range(12)]
    assert inflect_schedule(8, 0, 4) == [8, 8, 8, 8]


def test_merging_conserves_token_mass_on_a_real_block_stack():
    model = tiny_vision("dinov2")
    tokcomp.apply(model, [{"type": "tome", "r": 6}])
    from tokcomp.surgery import capture_final_state

    with torch.no_grad(), capture_final_state(model, trace_source=True) as states:
        model(pixel_values=torch.randn(2, 3, 32, 32))
    state = states[0]
    assert state.size.shape[1] == 65 - 4 * 6
    assert torch.allclose(state.size.sum(1), torch.full((2,), 65.0))
    # every input token is covered by exactly one output token
    assert torch.equal(state.source.sum(1), torch.ones(2, 65))
    assert torch.equal(state.source.sum(2), state.size)


def test_padding_never_leaks_into_real_tokens():
    """Changing what sits in the padded positions must not change any real token."""
    model = tiny_bert()
    tokcomp.apply(model, [{"type": "tome", "r": 3}])
    ids = torch.randint(5, 200, (2, 16))
    mask = torch.ones_like(ids)
    mask[:, 9:] = 0
    other = ids.clone()
    other[:, 9:] = torch.randint(5, 200, (2, 7))
    from tokcomp.surgery import capture_final_state

    with torch.no_grad(), capture_final_state(model) as states:
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = model(input_ids=other, attention_mask=mask).last_hidden_state
    sa, sb = states
    assert torch.equal(sa.real, sb.real)
    real = sa.real
    assert (a[real] - b[real]).abs().max().item() <= 1e-5
    # the real tokens still account for all 9 real input tokens
    assert torch.allclose(sa.weight().sum(1), torch.full((2,), 9.0))
