"""A run directory is one consistent unit: kill the training process at every write point, then
resume, and the run ends bit-identical to an uninterrupted one, with the same metric rows.

The kills are real: a child process ``cifarbench train`` SIGKILLs itself at a named write point
(``CIFARBENCH_TEST_KILL_AT``, read only by ``cifarbench.atomic.kill_point``). The children use
the NumPy backend: the code under test (checkpoint commit, trainer) is the same for every
backend, and a child that never imports torch starts in a fraction of the time. The resumes run
in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifarbench import checkpoint as ckpt
from conftest import invoke, write_npz

# 48 images, 16 held out for validation: 32 train / 16 = 2 steps per epoch, 3 epochs
# every value lenet's home recipe (configs/lenet.yaml) sets is pinned, so the validation accuracies, and so
# which generation is best and when pruning starts, do not move when that recipe changes
ARGS = ["--model", "lenet", "--augment", "flip", "--opt", "sgd", "--lr", "0.02", "--epochs", "3", "-b", "16",
        "--val-split", "16", "--backend", "numpy", "--no-record", "--momentum", "0.9", "--weight-decay", "0.01",
        "--normalize", "dataset", "--seed", "0", "--sched", "constant"]
# the fields of a metrics row that do not depend on the clock
EXACT = ("epoch", "train_loss", "train_acc", "eval_split", "eval_loss", "eval_acc", "lr", "momentum")
# ... and of a per-step row (steps.jsonl: at 2 steps per epoch, a row every step)
STEP_EXACT = ("epoch", "step", "global_step", "epoch_pos", "loss", "acc", "steps_in_row", "lr")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return "npz:" + str(write_npz(tmp_path_factory.mktemp("faults") / "d.npz", n_train=48, n_test=16))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    res = invoke(["train", "--dataset", data, *ARGS, "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def child(data: str, out: Path, kill_at: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CIFARBENCH_TEST_KILL_AT": kill_at}
    return subprocess.run([sys.executable, "-m", "cifarbench", "train", "--dataset", data, *ARGS, "-o", str(out),
                           *extra], env=env, capture_output=True, text=True, timeout=300)


def rows(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(x) for x in (run / name).read_text().splitlines()]


def assert_same_run(ref: Path, run: Path) -> None:
    a, b = ckpt.load_checkpoint(ref), ckpt.load_checkpoint(run)
    assert set(a.state) == set(b.state)
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k], err_msg=k)
    assert [{k: r[k] for k in EXACT} for r in rows(ref)] == [{k: r[k] for k in EXACT} for r in rows(run)]
    steps = [[{k: r[k] for k in STEP_EXACT} for r in rows(d, "steps.jsonl")] for d in (ref, run)]
    assert steps[0] == steps[1] and [r["global_step"] for r in steps[0]] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in b.sidecar["records"]] == [1, 2, 3]
    # nothing half-written is left, and the top of the run directory is the newest generation
    left = [p.name for p in run.rglob("*") if p.name.startswith((".new-", ".old-")) or p.name.endswith(".tmp")]
    assert left == []
    assert ckpt.verify(run)["generation"] == ckpt.list_generations(run)[0].name


# every write point of a checkpoint commit and of the metrics; @2 is the end of epoch 2
POINTS = ["weights@2", "optimizer@2", "manifest@2", "commit@2", "publish-model@2", "publish-optimizer@2",
          "prune@1", "best@1", "metrics@2", "steps@2"]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_write_point_then_resume_matches(point, data, reference, tmp_path):
    out = tmp_path / "run"
    killed = child(data, out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    res = invoke(["train", "--resume", str(out), "--no-record"])
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)


def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(data, reference, tmp_path):
    out = tmp_path / "run"
    stopped = child(data, out, "step@3:TERM")  # epoch 2, after its first step
    assert stopped.returncode == 143, stopped.stderr
    assert "resumable checkpoint" in stopped.stderr
    side = json.loads((out / ckpt.SIDECAR).read_text())
    assert (side["epoch"], side["step_in_epoch"]) == (1, 1)
    res = invoke(["train", "--resume", str(out), "--no-record"])
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)  # the resumed epoch's row too: its partial sums were saved


def test_interrupt_during_evaluation_keeps_the_epochs_train_metrics(data, reference, tmp_path):
    out = tmp_path / "run"
    stopped = child(data, out, "eval@2:INT")  # epoch 2 trained, its evaluation running
    assert stopped.returncode == 130, stopped.stderr
    side = json.loads((out / ckpt.SIDECAR).read_text())
    assert (side["epoch"], side["step_in_epoch"]) == (1, 2)
    assert side["partial_epoch"]["count"] == 32
    res = invoke(["train", "--resume", str(out), "--no-record"])
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)
    assert rows(out)[1]["images_per_s"] > 0


def test_second_interrupt_during_the_interrupt_save_keeps_the_last_checkpoint(data, reference, tmp_path):
    out = tmp_path / "run"
    # SIGINT after epoch 2's first step; a second one, just after the interrupt save wrote its weights,
    # cuts that save short
    env_point = "step@3:INT"
    env = {**os.environ, "CIFARBENCH_TEST_KILL_AT": env_point}
    code = ("import os, signal, cifarbench.atomic as a\n"
            "orig = a.kill_point\n"
            "def twice(name):\n"
            "    orig(name)\n"
            "    if name == 'weights' and a._kill_counts.get('step', 0) >= 3:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "a.kill_point = twice\n"
            "from cifarbench.cli import main\n"
            f"main({['train', '--dataset', data, *ARGS, '-o', str(out)]!r})\n")
    stopped = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 130, stopped.stderr
    assert "save was abandoned" in stopped.stderr
    assert json.loads((out / ckpt.SIDECAR).read_text())["epoch"] == 1  # epoch 1's checkpoint, whole
    res = invoke(["train", "--resume", str(out), "--no-record"])
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)


def test_kill_during_the_first_save_leaves_no_run_and_a_fresh_start_is_clean(data, reference, tmp_path):
    out = tmp_path / "run"
    killed = child(data, out, "weights@1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not ckpt.has_checkpoint(out) and list((out / ckpt.GENERATIONS).glob(".new-*"))
    res = invoke(["train", "--resume", str(out), "--no-record"])
    assert res.exit_code == 2 and "no checkpoint" in res.output
    res = invoke(["train", "--dataset", data, *ARGS, "-o", str(out)])  # nothing to overwrite: starts afresh
    assert res.exit_code == 0, res.output
    assert_same_run(reference, out)
