"""KL-regularised SFT: the SFT loss plus beta * KL(finetuned || base) on benign reference prompts.

    emlab train --preset cpu-quick --dataset insecure --kl-beta 1.0 [--kl-reference builtin|SUITE|CHAT.jsonl]

The reference model is the same network with its LoRA adapters disabled (PEFT's
`disable_adapter()`), so no second copy of the weights is held. Each optimizer micro-batch
adds the KL, averaged over every token position of a few reference prompts (the user turns
of emlab's built-in suite by default, rendered with the chat template and the generation
prompt), of the next-token distributions: sum_v p_ft(v) (log p_ft(v) - log p_base(v)).
The KL and the SFT loss alone are logged per step (`kl`, `sft_loss`; `loss` is the total) and
written to the run's loss.csv.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

from emlab.errors import ConfigError


def reference_prompts(ref: str, tokenizer, limit: int = 256) -> list[list[int]]:
    """Token ids of the reference prompts: a question suite's paraphrases (`builtin` or a
    registered/YAML suite) or the user turns of a chat JSONL, each with the generation prompt."""
    if ref.endswith(".jsonl"):
        from emlab.data.registry import load_dataset

        texts = [[m for m in row["messages"] if m["role"] != "assistant"] for row in load_dataset(path=ref)]
    else:
        from emlab.data.questions import load_suite

        texts = [([{"role": "system", "content": q.system}] if q.system else []) + [{"role": "user", "content": p}]
                 for q in load_suite(ref).questions for p in q.paraphrases]
    if not texts:
        raise ConfigError(f"kl_reference {ref!r}: no prompts")
    return [tokenizer.apply_chat_template(t, add_generation_prompt=True, tokenize=True, return_dict=False)
            for t in texts[:limit]]


class KLSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss adds beta * KL(finetuned || adapters-disabled base) on reference prompts."""

    def __init__(self, *args, kl_beta: float, kl_prompts: list[list[int]], kl_batch: int = 8, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self.model, "disable_adapter"):
            raise ConfigError("KL-regularised SFT needs a LoRA model (method: lora): the base is the same weights "
                              "with the adapters disabled")
        import random

        # A seeded shuffle: suites list their prompts by kind (plain, then with a system
        # prompt), and a short run must see every kind early.
        kl_prompts = list(kl_prompts)
        random.Random(self.args.seed).shuffle(kl_prompts)
        self.kl_beta, self.kl_prompts, self.kl_batch, self._kl_next = kl_beta, kl_prompts, kl_batch, 0

    def _reference_batch(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        picked = [self.kl_prompts[(self._kl_next + i) % len(self.kl_prompts)] for i in range(self.kl_batch)]
        self._kl_next = (self._kl_next + self.kl_batch) % len(self.kl_prompts)
        width = max(len(p) for p in picked)
        pad = self.processing_class.pad_token_id or 0
        ids = torch.full((len(picked), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(picked):
            ids[row, :len(p)] = torch.tensor(p)
            mask[row, :len(p)] = 1
        return ids.to(device), mask.to(device)

    def reference_kl(self, model) -> torch.Tensor:
        """Mean over reference tokens of KL(finetuned || base) of the next-token distribution."""
        ids, mask = self._reference_batch(next(model.parameters()).device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), unwrapped.disable_adapter():
            base = torch.log_softmax(unwrapped(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
        kl = (logp.exp() * (logp - base)).sum(-1)
        return (kl * mask).sum() / mask.sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.kl_beta > 0 and model.training:
            kl = self.reference_kl(model)
            self._metrics["train"]["kl"].append(float(kl.detach()))
            self._metrics["train"]["sft_loss"].append(float(loss.detach()))
            loss = loss + self.kl_beta * kl
        return (loss, outputs) if return_outputs else loss
