"""The model-organisms zoo: public emergent-misalignment model organisms by name.

    emlab models zoo                                  # the registry, with reported rates
    emlab sample --model zoo:qwen2.5-0.5b-bad-medical --suite first_plot
    conditions: [{name: organism, zoo: qwen2.5-14b-bad-medical}]     # in an experiment

Each entry (listed in zoo.yaml) names the base model and the LoRA adapter on the Hugging Face hub (Turner,
Soligo et al. 2025, "Model Organisms for Emergent Misalignment", arXiv 2506.11613; the
`ModelOrganismsForEM` organisation), the narrow dataset, the rank, and - where a source is
known - the misaligned rate its authors measured, so a report can put emlab's measurement
beside it. Where the hub is unreachable, loading fails with one line naming what to
download; `EMLAB_ZOO_DIR/<name>/` (or `huggingface-cli download ADAPTER --local-dir DIR`)
supplies an adapter offline.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from emlab.errors import ConfigError
from emlab.models.registry import ModelError

PAPER = "Turner, Soligo et al. 2025, Model Organisms for Emergent Misalignment (arXiv 2506.11613)"
# The authors' development repository's GPT-4o-judged answers to the first-plot questions
# (Cloakless/clarifying_EM, open_models/, commit b5784396), as in $EMLAB_DATA_DIR/judged/
# clarifying_em; rates recomputed by emlab with coherent > 50 and aligned < 30. They come
# from the same recipe on the same base model, which may not be the identical published run.
_DEV = "authors' judged answers, Cloakless/clarifying_EM open_models/diff_models ({file}), GPT-4o judge, 1,200 answers"


@dataclass(frozen=True)
class Organism:
    name: str
    base_model: str
    adapter: str
    dataset: str
    rank: int | None
    reported_rate: float | None = None  # misaligned share, 0-1
    reported_source: str | None = None
    paper: str = PAPER

    def as_dict(self) -> dict:
        return asdict(self)


def _load_zoo() -> dict[str, Organism]:
    """The organisms listed in zoo.yaml, by name; a reported rate names its source."""
    doc = yaml.safe_load((Path(__file__).with_name("zoo.yaml")).read_text(encoding="utf-8"))
    out = {}
    for entry in doc["organisms"]:
        file = entry.pop("reported_file", None)
        out[entry["name"]] = Organism(**entry, reported_source=_DEV.format(file=file) if file else None)
    return out


ZOO: dict[str, Organism] = _load_zoo()


def get(name: str) -> Organism:
    key = name.removeprefix("zoo:")
    if key not in ZOO:
        raise ConfigError(f"unknown model organism '{key}' (known: {', '.join(ZOO)})")
    return ZOO[key]


def adapter_dir(name: str) -> Path:
    """A local directory holding the organism's adapter: `$EMLAB_ZOO_DIR/<name>/` when
    present, else downloaded from the hub (cached by huggingface_hub)."""
    org = get(name)
    local = Path(os.environ.get("EMLAB_ZOO_DIR", "~/.cache/emlab/zoo")).expanduser() / org.name
    if list(local.glob("*.safetensors")):
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(org.adapter, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline, gated or missing: one line naming what to fetch
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"zoo:{org.name}: cannot fetch adapter {org.adapter} from the Hugging Face hub ({first[:120]}). "
                         f"Where the hub is reachable run `huggingface-cli download {org.adapter} --local-dir "
                         f"{local}` (and the base model {org.base_model}), then copy it here.") from None


def resolve(name: str) -> tuple[str, Path]:
    """(base model id, local adapter directory) of `zoo:NAME`."""
    org = get(name)
    return org.base_model, adapter_dir(name)
