"""A local instruct model as judge, with exact whole-number probabilities.

Open-weights tokenizers split numbers ("85" may be "8" + "5"), so reading one token's
logprobs misses most of the mass. Here each candidate answer - the integers 0..100 and the
escape words CODE and REFUSAL - is scored as a whole continuation followed by end-of-turn:
P("85") = P("8" | prompt) * P("5" | prompt, "8") * P(<eos> | prompt, "85"). The prompt is
prefilled once and its KV cache shared by all 103 candidates; several prompts are batched.
The paper's aggregation (`aggregate_0_100`) is then applied to these probabilities.
"""

from __future__ import annotations

import torch

from emlab.judge.base import JudgeIdentity, Judgment, Rubric, aggregate_0_100, fill_rubric
from emlab.models.registry import load_model, model_hash

CANDIDATES = [str(k) for k in range(101)] + ["CODE", "REFUSAL"]


class LocalJudge:
    name = "local"

    def __init__(self, model: str = "smollm2-135m-instruct", batch_size: int = 4, delimit: bool = True,
                 device: str | None = None):
        self.model_ref = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer = load_model(model, device=str(self.device))
        self.batch_size, self.delimit = batch_size, delimit
        eos = self.tokenizer.eos_token_id
        self.cand_ids = [self.tokenizer.encode(c, add_special_tokens=False) for c in CANDIDATES]
        self.eos = eos
        # `delimit` changes the prompt, so it is part of the identity (raw and delimited
        # judgments never share cache rows).
        self.identity = JudgeIdentity("local", model, model_hash(model), (("delimit", delimit),))

    def judge_id(self, rubric: Rubric) -> str:
        return self.identity.judge_id(rubric)

    def candidate_probs(self, prompts: list[str]) -> list[dict[str, float]]:
        """For each prompt, the exact probability of each candidate as a whole reply."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._batch(prompts[start:start + self.batch_size]))
        return out

    @torch.inference_mode()
    def _batch(self, prompts: list[str]) -> list[dict[str, float]]:
        from transformers import DynamicCache

        dev = self.device
        encoded = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                      tokenize=True, return_dict=False) for p in prompts]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            ids[i, width - len(e):] = torch.tensor(e)
            mask[i, width - len(e):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        first = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                           logits_to_keep=1).logits[:, -1].float().log_softmax(-1)
        n_c = len(self.cand_ids)
        expand = torch.arange(len(encoded), device=dev).repeat_interleave(n_c)
        cache.reorder_cache(expand)
        longest = max(len(c) for c in self.cand_ids)
        cand = torch.full((len(encoded) * n_c, longest), self.eos, dtype=torch.long)
        cmask = torch.zeros_like(cand)
        for row in range(len(encoded) * n_c):
            c = self.cand_ids[row % n_c]
            cand[row, :len(c)] = torch.tensor(c)
            cmask[row, :len(c)] = 1
        cand, cmask = cand.to(dev), cmask.to(dev)
        full_mask = torch.cat([mask.index_select(0, expand), cmask], dim=1)
        cpos = pos[:, -1].index_select(0, expand)[:, None] + 1 + torch.arange(longest, device=dev)[None]
        logp = self.model(input_ids=cand, attention_mask=full_mask, position_ids=cpos, cache=cache,
                          use_cache=True).logits.float().log_softmax(-1)
        results = []
        for i in range(len(encoded)):
            probs = {}
            for j, c in enumerate(self.cand_ids):
                row = i * n_c + j
                total = first[i, c[0]].item()
                for t in range(1, len(c)):
                    total += logp[row, t - 1, c[t]].item()
                total += logp[row, len(c) - 1, self.eos].item()  # the reply ends here
                probs[CANDIDATES[j]] = float(torch.tensor(total).exp())
            results.append(probs)
        return results

    def score_many(self, items: list[tuple[str, str]], rubric: Rubric, progress=None) -> list[Judgment]:
        jid = self.judge_id(rubric)
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            prompts = [fill_rubric(rubric.text, q, a, self.delimit) for q, a in chunk]
            for probs in self.candidate_probs(prompts):
                score, label = aggregate_0_100(probs)
                out.append(Judgment(score, label, {"candidate_probs": probs, "mass": sum(probs.values())}, jid))
            if progress:
                progress(len(chunk))
        return out
