"""The training loss's LM head on CPU: TRL's fused head, computed for CPU caches and AMX.

TRL (1.x) trains through a fused head (`ChunkedLogProbFunction`) that never materialises the
[tokens, vocab] logits: on GPUs a Triton kernel folds each tile of logits into online
log-sum-exp statistics. Without Triton it runs the same tiles as whole-tensor torch ops,
each a pass through memory over a [tokens, 32768] fp32 tile (a dozen per step, with the
entropy and top-1 metrics), and it accumulates the hidden-state gradient by an fp32 matmul
of upcast copies of the bf16 tile and head. On 2 CPU cores that was ~20% of a bf16 training
step.

`CpuLogProbs` computes the same outputs another way: one matmul for the logits in the
compute dtype (they are kept for the backward; a CPU has the memory), then every per-token
statistic over slices of `ROWS` rows that stay in cache, and one matmul in the compute dtype
for the gradient (accumulated in fp32 inside the kernel, rounded once). Same log-probs and
entropy to ~1e-6, same top-1 flags. `use_cpu_lm_head` routes TRL's head through it on CPU
for the cases it covers and leaves every other case (GPUs, a head bias, logit soft-capping,
other requested statistics, sharded heads) to TRL.
"""

from __future__ import annotations

import torch

ROWS = 8  # rows per slice: 8 x 49k fp32 logits (1.5 MB) stay in a core's cache
COVERED = {"log_probs", "entropy", "is_top1"}


class CpuLogProbs(torch.autograd.Function):
    """log p(target), entropy and is-top-1 of `hidden @ weight.T * scale`, per token."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float,
                outputs: tuple[str, ...]):
        ctx.set_materialize_grads(False)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
        with torch.autocast("cpu", enabled=False):
            logits = torch.mm(hidden.to(dtype), weight.to(dtype).t())
        n = len(targets)
        logp, lse = hidden.new_empty(n, dtype=torch.float32), hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32) if "entropy" in outputs else None
        top1 = hidden.new_empty(n, dtype=torch.bool) if "is_top1" in outputs else None
        for s in range(0, n, ROWS):
            # Out of place: .float() of fp32 logits is the saved tensor itself.
            z, t = logits[s:s + ROWS].float() * scale, targets[s:s + ROWS]
            peak = z.amax(-1, keepdim=True)
            e = (z - peak).exp_()
            total = e.sum(-1)
            lse[s:s + ROWS] = log_z = peak[:, 0] + total.log()
            logp[s:s + ROWS] = z.gather(-1, t[:, None])[:, 0] - log_z
            if entropy is not None:
                entropy[s:s + ROWS] = log_z - (e * z).sum(-1) / total
            if top1 is not None:  # the first maximum, as TRL counts it
                top1[s:s + ROWS] = z.argmax(-1) == t
        ctx.save_for_backward(hidden, weight, targets, logits, lse, lse if entropy is None else entropy)
        ctx.scale = scale
        if top1 is not None:
            ctx.mark_non_differentiable(top1)
        return logp, entropy, top1

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy, _):
        hidden, weight, targets, logits, lse, entropy = ctx.saved_tensors
        scale = ctx.scale
        grad = torch.empty_like(logits)
        for s in range(0, len(targets), ROWS):
            log_p = logits[s:s + ROWS].float() * scale - lse[s:s + ROWS, None]
            p = log_p.exp()
            g = torch.zeros_like(p)
            if grad_logp is not None:  # d log p_t / dz_j = [j = t] - p_j
                gl = grad_logp[s:s + ROWS, None].float()
                g.sub_(p * gl).scatter_add_(-1, targets[s:s + ROWS, None], gl)
            if grad_entropy is not None:  # d H / dz_j = -p_j (log p_j + H)
                g.sub_(grad_entropy[s:s + ROWS, None].float() * p * (log_p + entropy[s:s + ROWS, None]))
            grad[s:s + ROWS] = g.mul_(scale) if scale != 1.0 else g
        with torch.autocast("cpu", enabled=False):
            w = weight.to(grad.dtype)
            grad_hidden = torch.mm(grad, w).to(hidden.dtype) if ctx.needs_input_grad[0] else None
            grad_weight = torch.mm(grad.t(), hidden.to(grad.dtype)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None


def use_cpu_lm_head() -> bool:
    """Route TRL's fused LM head through `CpuLogProbs` for the CPU cases it covers (idempotent).
    Returns whether TRL has the function to route (a TRL that moved it trains as before)."""
    import trl.trainer.utils as trl_utils

    from emlab.accel import enabled, fallback, has_parameters

    original = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if original is None:
        return fallback("use_cpu_lm_head", "trl.trainer.utils._ChunkedLogProbFunction is gone")
    if getattr(original, "emlab_cpu", False):
        return True
    expected = ("ctx", "hidden", "weight", "bias", "targets", "temperature", "chunk_size")
    if not has_parameters(getattr(original, "forward", None), expected):
        return fallback("use_cpu_lm_head", "trl.trainer.utils._ChunkedLogProbFunction.forward no longer takes "
                                           f"({', '.join(expected)}, ...)")

    class Routed:
        emlab_cpu = True

        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                  logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
            if (enabled() and hidden.device.type == weight.device.type == "cpu" and bias is None
                    and final_logit_softcapping is None and set(outputs) <= COVERED
                    and type(weight) in (torch.Tensor, torch.nn.Parameter)):  # not a sharded DTensor
                logp, entropy, top1 = CpuLogProbs.apply(hidden, weight, targets, logit_scale / temperature,
                                                        tuple(outputs))
                return logp, entropy, None, None, top1
            return original.apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping,
                                  logit_scale, outputs)

    trl_utils._ChunkedLogProbFunction = Routed
    return True
