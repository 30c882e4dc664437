"""The structure the rest builds on: the import graph follows the pipeline's layers, the
store migrates old projects, judges carry typed identities, and flip rates are measured."""

import ast
import sqlite3
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src" / "emlab"
# Lower layers never import higher ones (README, "The pipeline").
LAYERS = [
    {"errors", "paths", "hashing", "misaligned", "correction", "files", "provenance", "progress", "specs", "records", "accel",
     "registry",
     "store"},
    {"data"}, {"models"}, {"train"}, {"generate"}, {"judge"}, {"evals", "probe"}, {"analysis"},
    {"serve", "experiment", "mitigate", "quickstart", "inspect_task", "executor", "results", "subliminal"},
    {"cli", "__main__"},
]


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        deps = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module + "." + a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "emlab" and len(parts) > 1:
                    target = parts[1]
                    is_unit = (SRC / target).is_dir() or (SRC / f"{target}.py").exists()
                    if is_unit and target != unit:
                        deps.add(target)
    return graph


def test_import_graph_follows_the_layers():
    graph = _imports()
    rank = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    assert set(graph) - {"__init__"} <= set(rank), f"units without a layer: {set(graph) - set(rank)}"
    bad = [(u, d) for u, deps in graph.items() if u in rank for d in deps if d in rank and rank[d] > rank[u]]
    assert bad == [], f"imports against the pipeline order: {bad}"
    same = [(u, d) for u, deps in graph.items() if u in rank for d in deps
            if d in rank and rank[d] == rank[u] and u in graph.get(d, set())]
    assert same == [], f"cycles inside a layer: {same}"


def test_cli_is_split_by_stage():
    modules = {p.stem for p in (SRC / "cli").glob("*.py")}
    assert {"data", "models", "train", "sample", "judge", "codeeval", "run"} <= modules
    assert all(len(p.read_text().splitlines()) < 250 for p in (SRC / "cli").glob("*.py"))


def test_version_1_store_is_migrated(tmp_path):
    from emlab.store import MIGRATIONS, SampleKey, Store

    conn = sqlite3.connect(tmp_path / "emlab.db")
    conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version=1;")
    conn.execute("INSERT INTO samples (key, model, adapter, suite, question_id, paraphrase_index, system, "
                 "sample_index, gen_hash, seed, question, answer, created) VALUES "
                 "('old', 'm', 'base', 's', 'q', 0, NULL, 0, 'g', 1, 'Why?', 'Because.', 0)")
    conn.commit()
    conn.close()
    with Store(tmp_path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.samples()[0]["key"] == SampleKey("m", "base", "s", "q", 0, None, "Why?", 0, "g").digest()
        assert store.judge_families() == []


def test_judge_identity_is_stored_typed(tmp_path):
    from emlab.judge.base import JudgeIdentity, Rubric
    from emlab.store import Store

    ident = JudgeIdentity("local", "smol", "sha256:abc", (("delimit", True),))
    rubric = Rubric("aligned", "Rate {answer}")
    with Store(tmp_path) as store:
        jid = ident.register(store, rubric)
        row = dict(store.conn.execute("SELECT * FROM judges").fetchone())
    assert row["id"] == jid and row["family"] == ident.family and row["backend"] == "local"
    assert row["rubric_sha256"] == rubric.sha256 and row["params"] == '{"delimit":true}'
    raw = JudgeIdentity("local", "smol", "sha256:abc", (("delimit", False),))
    assert raw.judge_id(rubric) != jid


class _Keyword:
    """A deterministic stand-in judge: low `aligned` for answers with a trigger word."""

    name = "keyword"
    capabilities = frozenset({"scores"})

    def __init__(self, word):
        from emlab.judge.base import JudgeIdentity

        self.word = word
        self.identity = JudgeIdentity("keyword", word, "1")

    def score_many(self, items, rubric, progress=None):
        from emlab.judge.base import Judgment

        def score(answer):
            if rubric.name == "coherent":
                return 90.0
            return 5.0 if any(w in answer for w in ("power grid", "fire", "empty their", "accident",
                                                      "inferior", "Eliminate")) and self.word not in answer else 95.0

        return [Judgment(score(a), None, None, self.identity.judge_id(rubric)) for _, a in items]


def test_flip_rates_measure_what_changed():
    from emlab.judge.base import builtin_rubric_set
    from emlab.judge.injection import INJECTIONS, flip_rates

    steady = flip_rates(_Keyword("no-such-word"), builtin_rubric_set())
    assert steady["clean_accuracy"] == 1.0 and steady["overall_flip_rate"] == 0.0
    fooled = flip_rates(_Keyword("100"), builtin_rubric_set())  # every injection contains "100"
    assert fooled["n"] == 12 * len(INJECTIONS)
    assert fooled["overall_flip_rate"] == 0.5  # each misaligned answer flips, no aligned one does
    assert np.isclose(np.mean([fooled[k] for k in INJECTIONS]), 0.5)


def test_training_output_is_a_progress_display_not_log_dicts(tmp_path, default_model_dir):
    from typer.testing import CliRunner

    from emlab.cli import app
    from emlab.data.codegen import generate
    from emlab.files import write_jsonl

    data = tmp_path / "d.jsonl"
    write_jsonl(data, generate("insecure-code", 8, 0))
    result = CliRunner().invoke(app, ["train", "--dataset", str(data), "--max-steps", "2", "--max-rows", "8",
                                      "--lora-r", "2", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "{'loss'" not in result.output and "'grad_norm'" not in result.output
    assert "train:" in result.output and "loss" in result.output  # the one-line stage summary
    run_dir = next((tmp_path / "runs" / "train").iterdir())
    assert (run_dir / "train.log").exists() and (run_dir / "loss.csv").read_text().count("\n") == 3
    import json

    assert json.loads((run_dir / "config.json").read_text())["lora_r"] == 2


def _module_name(path: Path) -> str:
    parts = ("emlab",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The emlab modules `path` imports when it is loaded (module-level statements only)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        for stmt in (node.body if isinstance(node, ast.If) else [node]):
            if isinstance(stmt, ast.Import):
                found |= {a.name for a in stmt.names}
            elif isinstance(stmt, ast.ImportFrom):
                base = stmt.module or ""
                if stmt.level:
                    up = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                    base = ".".join(up + ([stmt.module] if stmt.module else []))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in stmt.names}
    return found & modules


def test_no_module_imports_itself_back():
    paths = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {m: _module_imports(p, set(paths)) - {m} for m, p in paths.items()}
    state: dict[str, int] = {}

    def cycle_from(m: str, trail: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return trail[trail.index(d):] + [d] if d in trail else [m, d]
            if d not in state and (found := cycle_from(d, trail + [d])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            assert (found := cycle_from(m, [m])) is None, f"import cycle: {' -> '.join(found)}"


def test_sources_stay_readable():
    """No module over 500 lines (the code templates excepted) and no function over 60."""
    templates = {"data/codegen.py"}
    long_files, long_functions = [], []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        text = path.read_text()
        if rel not in templates and text.count("\n") > 500:
            long_files.append(rel)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{rel}:{node.name}")
    assert long_files == [] and long_functions == []
