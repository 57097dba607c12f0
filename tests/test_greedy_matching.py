"""Greedy pair matching (reducers/greedy_matching.py) and ToMe's `matching: greedy`."""

import pytest
import torch
import torch.nn.functional as F

import tokcomp
from tests.conftest import rate_at, state_of, tiny_bert
from tokcomp.reducers.greedy_matching import greedy_plan
from tokcomp.reducers.tome import ToMe
from tokcomp.surgery import capture_final_state
from tokcomp.surgery.attention import AttentionInfo


def python_greedy(scores: torch.Tensor, free: list[bool], removed: int) -> list[tuple[int, int]]:
    """The rule in plain Python: best allowed (source, target) first; a source is gone, a target never moves."""
    tokens = scores.shape[0]
    moved, received, merges = set(), set(), []
    candidates = sorted(
        ((scores[i, j].item(), i, j) for i in range(tokens) for j in range(tokens) if i != j and free[i] and free[j]),
        key=lambda c: (-c[0], c[1], c[2]),  # best first; ties to the earlier flat index, as argmax
    )
    for _, source, target in candidates:
        if len(merges) == removed:
            break
        if source in moved or source in received or target in moved:
            continue
        moved.add(source)
        received.add(target)
        merges.append((source, target))
    return merges


def test_hand_computed_greedy_choice_and_order():
    # token 0 protected; 1 and 3 are the closest pair, then 4 is closest to 3 (which has received),
    # while 2's best partner (1) has already moved
    scores = torch.tensor(
        [
            [0, 0, 0, 0, 0],
            [0, 0, 5, 9, 1],
            [0, 5, 0, 2, 3],
            [0, 9, 2, 0, 8],
            [0, 1, 3, 8, 0],
        ],
        dtype=torch.float32,
    )[None]
    plan = greedy_plan(scores, state_of(torch.ones(1, 5)), 2, 2, 3)
    assert plan.src.tolist() == [[1, 4]]  # 1 -> 3 (9), then 4 -> 3 (8): 3 may receive again
    assert plan.kept.tolist() == [[0, 2, 3]]  # order kept
    assert plan.dst.tolist() == [[2, 2]]  # both into output row 2 (token 3)


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("protected", [1, 2])
def test_matches_the_plain_python_rule_and_averages_by_size(padding, protected):
    torch.manual_seed(0)
    batch, tokens, channels = 3, 13, 5
    real = None
    if padding:
        real = torch.ones(batch, tokens, dtype=torch.bool)
        real[0, 9:] = False
        real[1, 6:] = False
    state = state_of(torch.randint(1, 4, (batch, tokens)).float(), real, protected)
    x = torch.randn(batch, tokens, channels)
    reducer = ToMe(rate_at(4, tokens, protected), protected, metric="hidden", matching="greedy")
    out, out_state = reducer(x, state, AttentionInfo(query=x[:, None], key=x[:, None], bias=None, scale=1.0))
    unit = F.normalize(x, dim=-1)
    scores = unit @ unit.transpose(-1, -2)
    scores = (scores + scores.transpose(-1, -2)) / 2
    removed = reducer.per_sample_removal(state, tokens)
    for b in range(batch):
        count = int(removed[b]) if isinstance(removed, torch.Tensor) else removed
        free = [bool(state.free()[b, i]) for i in range(tokens)]
        merges = python_greedy(scores[b], free, count)
        n_real = tokens if real is None else int(real[b].sum())
        moved = {s for s, _ in merges}
        kept = [i for i in range(n_real) if i not in moved]
        members = {k: [k] + [s for s, t in merges if t == k] for k in kept}
        for row, token in enumerate(kept):
            weight = state.size[b, members[token]]
            expected = (x[b, members[token]] * weight[:, None]).sum(0) / weight.sum()
            assert torch.allclose(out[b, row], expected, atol=1e-5)
            assert out_state.size[b, row] == weight.sum()
            assert out_state.position[b, row] == token
        if out_state.real is not None:
            assert not out_state.real[b, len(kept) :].any()
    assert (out_state.size * (out_state.real if out_state.real is not None else 1)).sum() == (
        state.size * (state.real if state.real is not None else 1)
    ).sum()


def test_a_sentence_gives_the_same_tokens_alone_and_in_a_padded_batch():
    model = tokcomp.apply(tiny_bert(), [{"type": "tome", "r": 3, "matching": "greedy"}], sequence_length=16)
    ids = torch.randint(5, 200, (3, 16))
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    mask[1, 12:] = 0
    with torch.no_grad(), capture_final_state(model) as states:
        batch = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for b in range(3):
            n = int(mask[b].sum())
            model(input_ids=ids[b : b + 1, :n], attention_mask=mask[b : b + 1, :n])
    for b in range(3):
        alone, state = states[1 + b], states[0]
        rows = int(state.real[b].sum())
        assert rows == alone.size.shape[1]
        assert torch.equal(state.position[b, :rows], alone.position[0])
    assert batch.isfinite().all()
