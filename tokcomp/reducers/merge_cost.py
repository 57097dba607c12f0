"""A learned merge cost for greedy matching: which pair of tokens the model misses least once merged.

Cosine similarity is a proxy for what a merge costs. On short inputs, where every merge is a
large share of the tokens, the proxy's errors decide the result: on MiniLM at -35% FLOPs, greedy
matching on measured costs reaches 0.976 mean-pooled cosine on 8-16-token sentences, on cosine
0.934 (benchmarks/results/merge_cost_model.md). This module predicts, per block, the cost of
merging tokens i and j:

    log cost(i, j) = w . (h_i + h_j) + b1 log(1 - cos h) + b2 log(1 - cos k)
                     + a log(s_i s_j / (s_i + s_j)) + c [+ MLP([h_i * h_j, |h_i - h_j|])]

(h: hidden states leaving the attention residual, k: attention keys averaged over heads, s: token
sizes), symmetric in i and j. The pair MLP is optional (`hidden` > 0); without it the cost needs
no per-pair pass over the hidden states. The parameters are fitted on calibration data
(calibrate/merge_cost.py) and travel in the checkpoint's weights.

The cost is evaluated only on candidate pairs: each token's `candidates` most cosine-similar
allowed partners, in either direction (N * k pairs, not N^2: at 128 tokens the MLP over all pairs
would cost more than the block). Other allowed pairs keep their cosine, ranked after every
candidate, so greedy matching always finds an allowed pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokcomp.reducers.ops import gather_tokens_reference as gather_rows  # not a swappable step
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState

# Non-candidate pairs score their cosine minus this: below every candidate (log costs are O(10)).
NON_CANDIDATE_OFFSET = 1e4
# 1 - cosine is clamped here before its log: identical tokens would otherwise give -inf.
MIN_DISTANCE = 1e-4


def symmetric_similarity(features: Tensor) -> Tensor:
    """[B, N, N] cosine of L2-normalised features [B, N, d], made exactly symmetric.

    A pair's two directions then tie exactly, and greedy matching breaks the tie by index,
    not by rounding that differs with the batch's padded length.
    """
    scores = features @ features.transpose(-1, -2)
    # halving in place on the fresh sum: exact, as / 2 is, without a third N x N tensor
    return (scores + scores.transpose(-1, -2)).mul_(0.5)


def candidate_cosine(features: Tensor, partners: Tensor) -> Tensor:
    """[B, N, k] dot products of L2-normalised features [B, N, d] with each token's partners [B, N, k].

    Only at the candidates: an [N, N] matrix would cost N / k times more. An elementwise product
    summed over d is the same for (i, j) and (j, i), so pairs stay exactly symmetric.
    """
    batch, tokens, k = partners.shape
    partner_rows = gather_rows(features, partners.flatten(1)).view(batch, tokens, k, -1)
    return (features[:, :, None, :] * partner_rows).sum(dim=-1)


def allowed_pairs(state: TokenState) -> Tensor:
    """[B, N, N] pairs greedy matching may merge: two distinct free tokens (real, not protected)."""
    free = state.free()
    tokens = free.shape[1]
    distinct = ~torch.eye(tokens, dtype=torch.bool, device=free.device)
    return free[:, :, None] & free[:, None, :] & distinct


def candidate_partners(similarity: Tensor, allowed: Tensor, candidates: int) -> Tensor:
    """[B, N, k] each token's k most similar allowed partners, k = min(candidates, N - 1).

    Where a token has fewer than k allowed partners (or may not move at all) the rest of its
    row names pairs that are not allowed; greedy matching never takes those.
    """
    masked = torch.where(allowed, similarity, torch.full_like(similarity, float("-inf")))
    return masked.topk(min(candidates, similarity.shape[-1] - 1), dim=-1).indices


def candidate_mask(partners: Tensor, allowed: Tensor) -> Tensor:
    """[B, N, N] allowed pairs in which either token is among the other's candidates (symmetric)."""
    chosen = torch.zeros_like(allowed).scatter(-1, partners, True)
    return (chosen | chosen.transpose(-1, -2)) & allowed


def rank_candidates_first(similarity: Tensor, partners: Tensor, candidate_scores: Tensor) -> Tensor:
    """[B, N, N] greedy scores: `candidate_scores` [B, N, k] at the candidates (either direction),
    the cosine minus NON_CANDIDATE_OFFSET elsewhere."""
    scores = (similarity - NON_CANDIDATE_OFFSET).scatter(-1, partners, candidate_scores.to(similarity.dtype))
    return torch.maximum(scores, scores.transpose(-1, -2))


class LearnedMergeCost(nn.Module):
    """One block's predicted log merge cost; `forward` gives greedy scores (higher merges first)."""

    def __init__(self, width: int, hidden: int, candidates: int):
        super().__init__()
        self.width, self.hidden, self.candidates = width, hidden, candidates
        self.weight = nn.Parameter(torch.zeros(width))  # w: the per-token term
        self.coefficients = nn.Parameter(torch.zeros(4))  # b1, b2, a, c
        self.pair = None  # hidden = 0: the linear cost
        if hidden:
            self.pair = nn.Sequential(nn.Linear(2 * width, hidden), nn.GELU(), nn.Linear(hidden, 1))
            nn.init.zeros_(self.pair[2].weight)  # starts as the linear model
            nn.init.zeros_(self.pair[2].bias)

    def log_cost(
        self,
        first: Tensor,
        second: Tensor,
        cos_hidden: Tensor,
        cos_keys: Tensor,
        size_first: Tensor,
        size_second: Tensor,
    ) -> Tensor:
        """Predicted log cost of pairs: hidden states [..., d], the rest [...] (any leading shape)."""
        return self._log_cost(
            first @ self.weight,
            second @ self.weight,
            None if self.pair is None else self._first_layer(first, second),
            cos_hidden,
            cos_keys,
            size_first,
            size_second,
        )

    def _first_layer(self, first: Tensor, second: Tensor) -> Tensor:
        """The pair MLP's first layer on [h_i * h_j, |h_i - h_j|], as two halves (no concatenation)."""
        layer, width = self.pair[0], self.width
        hidden = F.linear(first * second, layer.weight[:, :width])
        return hidden + F.linear((first - second).abs(), layer.weight[:, width:], layer.bias)

    def _log_cost(
        self,
        token_first: Tensor,
        token_second: Tensor,
        first_layer: Tensor | None,
        cos_hidden: Tensor,
        cos_keys: Tensor,
        size_first: Tensor,
        size_second: Tensor,
    ) -> Tensor:
        """The log cost from its parts: w . h of each token [...], the first layer's output [..., hidden] (None
        without a pair MLP)."""
        terms = torch.stack(
            [
                torch.log((1 - cos_hidden).clamp_min(MIN_DISTANCE)),
                torch.log((1 - cos_keys).clamp_min(MIN_DISTANCE)),
                torch.log(size_first * size_second / (size_first + size_second)).to(token_first.dtype),
            ],
            dim=-1,
        )
        linear = token_first + token_second + terms @ self.coefficients[:3] + self.coefficients[3]
        if first_layer is None:
            return linear
        return linear + self.pair[2](self.pair[1](first_layer))[..., 0]

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> Tensor:
        """[B, N, N] greedy scores: minus the predicted log cost at candidate pairs."""
        batch, tokens, _ = x.shape
        similarity = symmetric_similarity(F.normalize(x, dim=-1))
        partners = candidate_partners(similarity, allowed_pairs(state), self.candidates)
        k = partners.shape[-1]
        flat = partners.flatten(1)
        token_term = x @ self.weight
        first_layer = None
        if self.pair is not None:
            # one partner slot at a time: [B, N, d] pair features stay in cache, [B, N, k, d] would not
            first_layer = torch.stack(
                [self._first_layer(x, gather_rows(x, partners[:, :, slot])) for slot in range(k)], dim=2
            )
        log_cost = self._log_cost(
            token_term[:, :, None],
            token_term.gather(1, flat).view(batch, tokens, k),
            first_layer,
            similarity.gather(-1, partners),
            candidate_cosine(F.normalize(attn.key_metric(), dim=-1), partners),
            state.size[:, :, None],
            state.size.gather(1, flat).view(batch, tokens, k),
        )
        return rank_candidates_first(similarity, partners, -log_cost)

    def macs(self, tokens: int) -> int:
        """Multiply-accumulates of `forward` on `tokens` tokens per sample: the per-token term and the pair
        MLP on N x k candidate pairs (the similarity matrices it shares with greedy matching not counted)."""
        pairs = tokens * min(self.candidates, max(tokens - 1, 0))
        return tokens * self.width + pairs * (2 * self.width * self.hidden + self.hidden)

    def extra_repr(self) -> str:
        return f"width={self.width}, hidden={self.hidden}, candidates={self.candidates}"
