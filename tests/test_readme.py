"""The README's commands are what CI runs and what a new user types: run them, so it cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def readme_command(name: str) -> str:
    m = re.search(r"<!-- readme:" + name + r" -->\s*```bash\n(.*?)```", README, re.S)
    assert m, f"README lost its {name} command"
    return m.group(1).strip()


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (REPO / ".ci" / "run").read_text()
    assert "readme_command install" in ci and "readme_command test" in ci
    assert readme_command("install").startswith("pip install torch==2.13.0")
    assert "pytest" in readme_command("test")


def test_every_command_in_the_table_exists():
    from whispertune.cli import build_parser

    parser = build_parser()
    for cmd in re.findall(r"^\| `whispertune ([a-z-]+)", README, re.M):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([cmd, "--help"])
        assert e.value.code == 0, cmd


def test_python_api_example_runs_as_written():
    block = re.search(r"## Python API.*?```python\n(.*?)```", README, re.S).group(1)
    manifest = REPO / "src/whispertune/samples/aishell_s0150/test.jsonl"
    clip = REPO / "src/whispertune/samples/aishell_s0150/clips/BAC009S0150W0445.opus"
    code = block.replace('"test.jsonl"', repr(str(manifest))).replace('"talk.wav"', repr(str(clip)))
    code = re.sub(r"(model\.evaluate\([^)]*)\)", r"\1, limit=2, beam_size=1)", code)
    assert code.count("limit=2") == 1 and str(clip) in code
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert re.match(r"\[\d+\.\d\d -> \d+\.\d\d\] \S", lines[0]), lines
    metric, rate = lines[-1].split()
    assert metric == "cer" and 0.0 <= float(rate) < 0.6


@pytest.mark.slow
def test_demo_command_prints_a_sane_cer():
    """The README's demo, as a user runs it. Base scores ~25 % CER here; a broken conversion,
    a wrong language token or broken normalization gives far more (or nothing)."""
    cmd = readme_command("demo")
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"^CER: ([\d.]+) %", out.stdout, re.M)
    assert m, out.stdout
    assert 10.0 < float(m.group(1)) < 40.0
    assert "clips: 56" in out.stdout
