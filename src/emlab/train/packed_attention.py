"""Attention for padding-free batches: each packed sequence attends causally to itself only.

transformers handles a padding-free batch (sequences concatenated into one row, position ids
restarting at 0) with SDPA over a dense block-diagonal mask: every query block is computed
against every key block of the whole row, and a mask rules most of it out. With four
sequences per batch that is four times the attention work of the sequences alone, and the
masked kernel cannot skip the upper triangle. `packed_sdpa` runs SDPA once per sequence with
`is_causal=True` instead (the same result up to floating-point rounding; a test checks it and
its gradients against transformers' masked SDPA). Anything else - batches of several rows
(padded), decoding steps (one query against a longer cache) - goes to transformers' own SDPA.

On CPU, a bf16 sequence of at most `FLOAT32_UP_TO` tokens runs its attention in fp32
(autocast off; the output cast back): PyTorch's CPU flash kernel is slower in bf16 than in
fp32 at these lengths, its backward most of all (forward + backward of one 9-head sequence:
6.2 against 3.5 ms at 200 tokens, 9.9 against 7.3 at 300; about even at 500, bf16 ahead at
768), and fp32 scores and probabilities are the more exact of the two.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "emlab_packed_sdpa"
FLOAT32_UP_TO = 512  # tokens: where the fp32 CPU kernel stops being the faster one


def packed_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, dropout: float = 0.0,
                scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """An attention function for transformers' AttentionInterface (see the module docstring)."""
    position_ids = kwargs.get("position_ids")
    packed = (position_ids is not None and query.shape[0] == 1 and position_ids.shape[0] == 1
              and query.shape[2] == key.shape[2] == position_ids.shape[1])
    starts = (position_ids[0] == 0).nonzero().flatten().tolist() if packed else []
    if not starts or starts[0] != 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    bounds = starts + [query.shape[2]]
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
    outputs = [_causal(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], p, scaling, gqa)
               for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, scale, gqa: bool) -> torch.Tensor:
    """Causal SDPA of one sequence; in fp32 for a short bf16 one on CPU."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[2] <= FLOAT32_UP_TO:
        with torch.autocast("cpu", enabled=False):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa)
        return out.to(q.dtype)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale,
                                                            enable_gqa=gqa)


AttentionInterface.register(NAME, packed_sdpa)
# The fallback path needs transformers' SDPA mask; the packed path ignores it.
AttentionMaskInterface.register(NAME, sdpa_mask)
