"""ToMe: bipartite soft matching (Bolya et al., ICLR 2023).

1. metric = attention keys averaged over heads, L2-normalised;
2. alternating split A = even tokens, B = odd tokens; scores S = A B^T; protected tokens
   (CLS, distillation, registers) never move and never receive (reducers/matching.py);
3. each sample moves r of its own tokens, r = the layer's rate of its reducible tokens,
   at most half of them;
4. every A token picks its best B partner; the r A tokens with the highest scores merge
   into their partners (several may share one), size-weighted;
5. output order [protected, A that stay in index order, all of B], then padding.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tokcomp.reducers.base import Reducer
from tokcomp.reducers.matching import bipartite_matching, merge_matched
from tokcomp.surgery.attention import AttentionInfo
from tokcomp.surgery.state import TokenState


class ToMe(Reducer):
    kind = "tome"

    def forward(self, x: Tensor, state: TokenState, attn: AttentionInfo) -> tuple[Tensor, TokenState]:
        tokens = x.shape[1]
        length = self.kept_tokens(tokens)
        matching = bipartite_matching(F.normalize(attn.key_metric(), dim=-1), state)
        return merge_matched(x, state, matching, self.per_sample_removal(state, tokens), tokens - length, length)
