"""Test set-up: cache and data directories are redirected through environment variables.

- EMLAB_HOME points at `.emlab/test-home` in the repository (ignored by git) so the
  converted default model is reused across runs but never touches the user's cache.
- EMLAB_DATA_DIR defaults to ../shared/data (the paper's public data, never copied here).
- `--runslow` enables tests marked slow.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("EMLAB_HOME", str(REPO / ".emlab" / "test-home"))
os.environ.setdefault("EMLAB_DATA_DIR", str((REPO / ".." / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Property tests draw the same examples on every run and machine (no chance failures on a fresh clone).
from hypothesis import settings  # noqa: E402

settings.register_profile("emlab", derandomize=True, deadline=None)
settings.load_profile("emlab")

DATA = Path(os.environ["EMLAB_DATA_DIR"]).resolve()
ARTIFACTS = REPO / "test-artifacts"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


# Fixtures that bring in a real part: a test using one (directly or through another fixture)
# is marked without having to say so.
MODEL_FIXTURES = {"default_model_dir"}
DATA_FIXTURES = {"data_dir"}


def pytest_collection_modifyitems(config, items):
    """Tiers: `model` (loads a model, an embedded judge, trains, or drives a browser: every
    `browser` test is also `model`) and `data` (reads EMLAB_DATA_DIR) are marked here from the
    fixtures a test uses; `pytest -m "not model"` is the fast tier. `slow` runs with --runslow."""
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & MODEL_FIXTURES or "browser" in item.keywords:
            item.add_marker(pytest.mark.model)
        if names & DATA_FIXTURES:
            item.add_marker(pytest.mark.data)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "em_paper" / "insecure.jsonl").exists():
        pytest.fail(f"EMLAB_DATA_DIR={DATA} does not hold the paper's data (see README)")
    return DATA


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from emlab.models.registry import DEFAULT_MODEL, pull

    return pull(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
