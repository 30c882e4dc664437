"""A local instruct model as judge, with exact whole-number probabilities.

Open-weights tokenizers split numbers ("85" may be "8" + "5"), so reading one token's
logprobs misses most of the mass. Here each candidate answer - the integers 0..100 and the
escape words CODE and REFUSAL - is scored as a whole continuation followed by end-of-turn:
P("85") = P("8" | prompt) * P("5" | prompt, "8") * P(<eos> | prompt, "85"). The candidates
form a token trie (shared prefixes: "8" is the prefix of 80-89); the prompt is prefilled
once and every trie node is scored in one more forward pass with a tree attention mask
(each node sees the prompt and its own ancestors), so the 103 candidates cost 105 tokens,
not 103 continuations each with its own copy of the prompt's KV cache.
The paper's aggregation (`aggregate_0_100`) is then applied to these probabilities.
"""

from __future__ import annotations

import torch

from emlab.judge.base import LABELS, SCORES, JudgeIdentity, Judgment, Rubric, family_params, judge_prompt, pick_category
from emlab.models.registry import DEFAULT_MODEL, load_model, model_hash

CANDIDATES = [str(k) for k in range(101)] + ["CODE", "REFUSAL"]


class LocalJudge:
    name = "local"
    capabilities = frozenset({SCORES, LABELS})

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 4, delimit="auto",
                 device: str | None = None, rubrics: str = "aligned-coherent"):
        self.model_ref = model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer = load_model(model, device=str(self.device))
        self.batch_size, self.delimit = batch_size, delimit
        self.eos = self.tokenizer.eos_token_id
        self._tries: dict[tuple[str, ...], tuple] = {}
        # `delimit` changes the prompt, so it is part of the identity (raw and delimited
        # judgments never share cache rows).
        self.identity = JudgeIdentity("local", model, model_hash(model), (("delimit", delimit),) + family_params(rubrics))

    @classmethod
    def from_spec(cls, spec) -> "LocalJudge":
        return cls(model=spec.default_model(), delimit=spec.delimit, rubrics=spec.rubrics)

    def judge_id(self, rubric: Rubric) -> str:
        return self.identity.judge_id(rubric)

    def candidate_probs(self, prompts: list[str], candidates: tuple[str, ...] = tuple(CANDIDATES)
                        ) -> list[dict[str, float]]:
        """For each prompt, the exact probability of each candidate as a whole reply."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._batch(prompts[start:start + self.batch_size], candidates))
        return out

    def _trie(self, candidates: tuple[str, ...]):
        """The candidates as a token trie: node tokens, depths, an ancestor-or-self matrix, and
        for every (candidate, step) the node whose next-token distribution scores that step
        (-1: the prompt's own) and the token it must give - the last step of each candidate
        is end-of-turn."""
        if candidates not in self._tries:
            cand_ids = [self.tokenizer.encode(c, add_special_tokens=False) for c in candidates]
            index: dict[tuple, int] = {}
            tokens, parents, depths = [], [], []
            for c in cand_ids:
                for d in range(len(c)):
                    prefix = tuple(c[:d + 1])
                    if prefix not in index:
                        index[prefix] = len(tokens)
                        tokens.append(c[d])
                        parents.append(index[prefix[:-1]] if d else -1)
                        depths.append(d)
            n = len(tokens)
            anc = torch.zeros((n, n), dtype=torch.bool)
            for i in range(n):
                k = i
                while k >= 0:
                    anc[i, k] = True
                    k = parents[k]
            src, tgt, owner = [], [], []
            for j, c in enumerate(cand_ids):
                for d, tok in enumerate(list(c) + [self.eos]):
                    src.append(index[tuple(c[:d])] if d else -1)
                    tgt.append(tok)
                    owner.append(j)
            self._tries[candidates] = (torch.tensor(tokens), torch.tensor(depths), anc, torch.tensor(src),
                                       torch.tensor(tgt), torch.tensor(owner))
        return self._tries[candidates]

    @torch.inference_mode()
    def _batch(self, prompts: list[str], candidates: tuple[str, ...]) -> list[dict[str, float]]:
        """Every candidate in one pass: the prompts are prefilled, then all trie nodes (105
        tokens for 0-100, CODE and REFUSAL) follow as one sequence whose tree-shaped
        attention mask lets each node see the prompt and its own ancestors only - no KV-cache
        copies per candidate, no repeated prefixes."""
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
        tokens, depths, anc, src, tgt, owner = (t.to(dev) for t in self._trie(candidates))
        b, n = len(encoded), len(tokens)
        tree_mask = torch.cat([mask.bool()[:, None, None, :].expand(b, 1, n, width),
                               anc[None, None].expand(b, 1, n, n)], dim=-1)
        node_pos = pos[:, -1:] + 1 + depths[None]
        logp = self.model(input_ids=tokens[None].expand(b, n), attention_mask=tree_mask, position_ids=node_pos,
                          cache=cache, use_cache=True).logits.float().log_softmax(-1)
        every = torch.cat([first[:, None], logp], dim=1)  # row 0: after the prompt; row k+1: after node k
        steps = every[:, src + 1, tgt]  # [b, steps of all candidates]
        totals = torch.zeros((b, len(candidates)), device=dev).index_add_(1, owner, steps)
        probs = totals.exp().cpu().tolist()
        return [dict(zip(candidates, map(float, row))) for row in probs]

    def score_many(self, items: list[tuple[str, str]], rubric: Rubric, progress=None) -> list[Judgment]:
        if rubric.categories is not None:
            return self._classify(items, rubric, progress)
        jid = self.judge_id(rubric)
        out = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            prompts = [judge_prompt(rubric, q, a, self.delimit) for q, a in chunk]
            for probs in self.candidate_probs(prompts, rubric.candidates):
                score, label = rubric.aggregate(probs)
                out.append(Judgment(score, label, {"candidate_probs": probs, "mass": sum(probs.values())}, jid))
            if progress:
                progress(len(chunk))
        return out

    def _classify(self, items: list[tuple[str, str]], rubric: Rubric, progress=None) -> list[Judgment]:
        """A categorical rubric: the exact probability of each allowed answer as a whole reply."""
        jid = self.judge_id(rubric)
        prompts = [judge_prompt(rubric, q, a, self.delimit) for q, a in items]
        out = [pick_category(probs, {"candidate_probs": probs}, jid)
               for probs in self.candidate_probs(prompts, rubric.categories)]
        if progress:
            progress(len(items))
        return out
