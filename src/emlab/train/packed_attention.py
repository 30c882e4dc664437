"""Attention for padding-free batches: each packed sequence attends causally to itself only.

transformers handles a padding-free batch (sequences concatenated into one row, position ids
restarting at 0) with SDPA over a dense block-diagonal mask: every query block is computed
against every key block of the whole row, and a mask rules most of it out. With four
sequences per batch that is four times the attention work of the sequences alone, and the
masked kernel cannot skip the upper triangle. `packed_sdpa` runs SDPA once per sequence with
`is_causal=True` instead (the same result up to floating-point rounding; a test checks it and
its gradients against transformers' masked SDPA). Anything else - batches of several rows
(padded), decoding steps (one query against a longer cache) - goes to transformers' own SDPA.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "emlab_packed_sdpa"


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
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout if module.training else 0.0,
            is_causal=True, scale=scaling, enable_gqa=gqa)
        for s, e in zip(bounds[:-1], bounds[1:]) if e > s
    ]
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa)
# The fallback path needs transformers' SDPA mask; the packed path ignores it.
AttentionMaskInterface.register(NAME, sdpa_mask)
