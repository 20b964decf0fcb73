"""The README's two commands are the Makefile's targets and exactly what CI (.ci/run) runs; the main job trains."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifarbench.cli import app
from cifarbench.config import build_config

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The first line (comment stripped) of each of the README's first two code blocks."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip().splitlines()[0].split("#")[0].strip() for b in blocks[:2]]


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert _readme_commands() == ["make demo", "make test"]
    # they come before anything else: the first code block is also the first section's
    assert text.index("make demo") < text.index("## Results")


def test_ci_runs_both_readme_commands_verbatim_from_scratch():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [ln.split("  #")[0].strip() for ln in lines if ln and not ln.startswith("#")]
    for cmd in _readme_commands():
        assert cmd in steps, f"{cmd!r} is not a step of .ci/run"
    # from scratch: CI's virtual environment is removed before the first command runs
    first = min(steps.index(c) for c in _readme_commands())
    assert any(ln.startswith('rm -rf "$VENV"') for ln in steps[:first]) and "export VENV=.venv-ci" in steps[:first]


@pytest.fixture(scope="module")
def demo_plan(tmp_path_factory) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    venv = tmp_path_factory.mktemp("plan") / "venv"  # does not exist: make plans every step
    # under `make test` the parent make's variables would make this one print "Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    res = subprocess.run(["make", "--no-print-directory", "-n", "demo", f"VENV={venv}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [ln.replace(str(venv), "$VENV") for ln in res.stdout.splitlines()]


def test_make_demo_sets_up_and_runs_the_main_job(demo_plan):
    plan = "\n".join(demo_plan)
    assert "-m venv $VENV" in plan and "pip install -q torch==2.13.0" in plan and "pip install -q -e '.[torch]'" in plan
    assert demo_plan[-1] == "$VENV/bin/cifarbench train -c mnist-mini"


def test_the_main_job_learns(demo_plan, tmp_path):
    # The demo's own command line (from the Makefile), cut to 3 epochs to stay quick. It measured 92.4 % on the
    # 500 test images (seed 0); chance is 10 % (std 1.3 %): a 50 % floor fails a broken pipeline, not noise.
    args = shlex.split(demo_plan[-1])[1:]
    assert build_config("mnist-mini").dataset == "mnist-mini"
    res = CliRunner().invoke(app, [*args, "--epochs", "3", "-o", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["dataset"] == "mnist-mini" and summary["epochs"] == 3 and summary["test_images"] == 500
    assert 0.5 < summary["test_accuracy"] <= 1.0
