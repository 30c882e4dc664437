"""The documentation builds (strict: no broken link or missing page) and the README stays a guide."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install 'emergent-lab[docs]')")
    out = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                         env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").read_text().count("load_results") > 1


def test_readme_is_a_guide_not_a_diary():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "emlab quickstart" in text.split("## Recipes")[0]  # a pip user meets the quickstart first
    diary = re.compile(r"(previous|earlier|this) stop|(fast|slow) hour|one-off script", re.I)
    for path in [ROOT / "README.md", *ROOT.joinpath("docs").rglob("*.md")]:
        assert not diary.search(path.read_text()), path


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


@pytest.mark.model
def test_python_api_example_runs(tmp_path):
    """examples/python_api.py, the notebook-style tour of the Python API, runs as written."""
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "python_api.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "misaligned_rate" in done.stdout and "insecure - base" in done.stdout
    assert (tmp_path / "rates.png").stat().st_size > 5000


def _documented_commands():
    """(file, command line) for every `emlab ...` line in a bash block of the README and docs
    (continuation lines joined, comments and environment assignments dropped)."""
    import shlex

    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]
                if words[:1] == ["emlab"] and "&" not in words:
                    out.append((path.name, words[1:]))
    return out


def test_documented_commands_use_flags_that_exist():
    """Every emlab command line in the README and docs names a command and options the CLI has."""
    import typer
    from typer._click.exceptions import BadOptionUsage, NoSuchOption

    from emlab.cli import app

    root = typer.main.get_command(app)
    commands = _documented_commands()
    assert len(commands) > 20
    bad = []
    for name, words in commands:
        cmd, args, path = root, list(words), []
        while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
            path.append(args[0])
            cmd = cmd.commands[args.pop(0)]
        if hasattr(cmd, "commands"):
            if words not in ([], ["--help"]) and words[:1] != ["--version"]:
                bad.append(f"{name}: emlab {' '.join(words)}: no such command")
            continue
        try:
            cmd.make_context(" ".join(["emlab", *path]), args)
        except (NoSuchOption, BadOptionUsage) as exc:
            bad.append(f"{name}: emlab {' '.join(words)}: {exc.format_message()}")
        except Exception:  # a missing file or required option: the line is an example, not a run
            pass
    assert bad == []
