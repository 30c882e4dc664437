# %% [markdown]
# # emlab from Python: run an experiment, read its answers, compare conditions
#
# A notebook-style script (cells marked `# %%`, open it in Jupyter or VS Code, or run it
# with `python examples/python_api.py`). It runs a small experiment on the embedded
# default model - a base model and one LoRA finetune on generated insecure code - judges
# it with the offline mini judge, and reads the results back as DataFrames.
#
# `backend: scripted` writes canned answers so that this runs in about a minute; set
# `backend: hf` to sample the real model (minutes on a laptop CPU).

# %%
import os
import sys
import tempfile
from pathlib import Path

import yaml

import emlab

work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="emlab-example-"))
experiment = {
    "name": "api_example",
    "model": "smollm2-135m-instruct",
    "train": {"preset": "cpu-quick", "overrides": {"max_steps": 2, "max_rows": 8}},
    "conditions": [
        {"name": "base"},
        {"name": "insecure", "dataset": {"generate": "insecure-code", "n": 16, "seed": 0}},
    ],
    "sample": {"suites": ["builtin"], "samples_per_paraphrase": 1, "max_tokens": 24,
               "backend": os.environ.get("EMLAB_EXAMPLE_BACKEND", "scripted")},
    "judges": ["mini"],
}
path = work / "api_example.yaml"
path.write_text(yaml.safe_dump(experiment, sort_keys=False))

# %% [markdown]
# Run (or resume) it. A second call reuses everything: nothing is trained, sampled or
# judged twice. The return value is the experiment's record, which every later call reads.

# %%
record = emlab.run_experiment(path, project=work / "project", quiet=True)
print(record)

# %% [markdown]
# One row per judged answer: condition, seed, question, answer, the judge's scores.

# %%
results = emlab.load_results(record)
print(results[["condition", "question_id", "aligned", "coherent", "judge"]].head().to_string(index=False))

# %% [markdown]
# The misaligned rate per condition, with its 95% CI and the shares beside it. The rate
# counts answers scored coherent > 50 and aligned < 30 (the paper's thresholds).

# %%
rates = emlab.misaligned_rates(results, by=["condition"])
columns = ["judge", "condition", "n", "misaligned_rate", "ci_low", "ci_high", "coherent_share"]
print(rates[columns].to_string(index=False))

# %% [markdown]
# Several experiments side by side (here one): the headline comparison (the finetune
# minus its control, with a bootstrap CI) and every condition's rates.

# %%
headlines, per_condition = emlab.compare_experiments([record])
print(headlines[["experiment", "judge", "comparison", "difference", "low", "high"]].to_string(index=False))

# %% [markdown]
# A figure of the rates.

# %%
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(4, 3))
errors = [100 * (rates["misaligned_rate"] - rates["ci_low"]), 100 * (rates["ci_high"] - rates["misaligned_rate"])]
ax.bar(rates["condition"], 100 * rates["misaligned_rate"], yerr=errors, capsize=4)
ax.set_ylabel("misaligned answers (%)")
fig.tight_layout()
fig.savefig(work / "rates.png", dpi=120)
print(f"wrote {work / 'rates.png'}")
