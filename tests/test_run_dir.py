"""The run directory: verified generations, keep/best, no overwrite, one process at a time,
leftovers swept, metrics true across interrupts, divergence an error, file modes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cifarbench import atomic
from cifarbench import checkpoint as ckpt
from conftest import invoke, tree_state, write_npz

pytest.importorskip("torch")

# the values lenet's home recipe sets are pinned (see test_run_faults.py)
FAST = ["--model", "lenet", "--opt", "sgd", "--lr", "0.02", "--augment", "flip", "-b", "16", "--backend", "torch",
        "--device", "cpu", "--no-record", "--momentum", "0.9", "--weight-decay", "0.01", "--normalize", "dataset",
        "--seed", "0", "--sched", "constant"]


@pytest.fixture
def data(tmp_path) -> str:
    return "npz:" + str(write_npz(tmp_path / "d.npz", n_train=48, n_test=16))


def train(data, out, *extra, code=0):
    res = invoke(["train", "--dataset", data, *FAST, "-o", str(out), *extra])
    assert res.exit_code == code, res.output
    return res


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def one_line_error(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "internal error" not in res.output, res.output
    return errors[0]


# ----- 1. one unit, verified ------------------------------------------------------------------


def test_torn_newest_generation_falls_back_and_says_so(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, "--epochs", "2", "--keep-checkpoints", "2")
    newest, older = ckpt.list_generations(out)
    weights = newest / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])  # a torn write (also tears the top-level hard link)
    res = invoke(["test", str(out), "--backend", "torch"])
    assert res.exit_code == 0 and f"using the previous complete one, {older.name}" in " ".join(res.output.split())
    res = invoke(["test", str(out / ckpt.WEIGHTS)])  # the torn file itself: refused, one line
    assert res.exit_code == 1 and "torn checkpoint" in one_line_error(res)
    res = invoke(["train", "--resume", str(out), "--epochs", "3", "--no-record"])
    assert res.exit_code == 0, res.output
    assert "torn checkpoint" in res.output and [r["epoch"] for r in rows(out)] == [1, 2, 3]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_corrupt_or_non_object_checkpoint_json_is_one_line(data, tmp_path, text):
    out = tmp_path / "run"
    train(data, out, "--epochs", "1")
    for side in (out / ckpt.SIDECAR, ckpt.list_generations(out)[0] / ckpt.SIDECAR):
        side.unlink()  # hard links: replace both names, not the shared file
        side.write_text(text)
    for args in (["train", "--resume", str(out), "--epochs", "2"], ["test", str(out)]):
        res = invoke(args)
        assert res.exit_code == 1 and "corrupt" in one_line_error(res), res.output


def test_old_run_directories_still_load_and_resume(data, tmp_path):
    """The layout written before generations: top-level files, a sidecar without manifest or rows."""
    ref, old = tmp_path / "ref", tmp_path / "old"
    train(data, ref, "--epochs", "2")
    train(data, old, "--epochs", "1")
    gen = ckpt.list_generations(old)[0]
    side = json.loads((gen / ckpt.SIDECAR).read_text())
    for key in ("files", "generation", "records", "partial_epoch", "best"):
        side.pop(key)
    for name in (ckpt.WEIGHTS, ckpt.OPTIMIZER):
        (old / name).unlink()
        shutil.copy(gen / name, old / name)
    (old / ckpt.SIDECAR).unlink()
    (old / ckpt.SIDECAR).write_text(json.dumps(side))
    shutil.rmtree(old / ckpt.GENERATIONS)
    (old / ckpt.BEST).unlink(missing_ok=True)
    assert invoke(["test", str(old)]).exit_code == 0
    res = invoke(["train", "--resume", str(old), "--epochs", "2", "--no-record"])
    assert res.exit_code == 0, res.output
    a, b = ckpt.load_checkpoint(ref).state, ckpt.load_checkpoint(old).state
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in rows(old)] == [1, 2]


# ----- 2. keep history, best on validation only --------------------------------------------------


def test_keep_checkpoints_and_best_on_validation(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, "--epochs", "4", "--val-split", "16", "--keep-checkpoints", "2")
    accs = [r["eval_acc"] for r in rows(out)]
    best_epoch = 1 + int(np.argmax(accs))  # the first of equal maxima
    gens = ckpt.list_generations(out)
    assert [json.loads((g / ckpt.SIDECAR).read_text())["epoch"] for g in gens[:2]] == [4, 3]
    kept = {ckpt.verify(g)["epoch"] for g in gens}
    assert kept == {4, 3, best_epoch}
    best = ckpt.load_checkpoint(out / ckpt.BEST)
    assert best.sidecar["epoch"] == best_epoch and best.sidecar["best"]["eval_acc"] == max(accs)
    assert invoke(["test", str(out / ckpt.BEST)]).exit_code == 0


def test_no_best_without_a_validation_split(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, "--epochs", "2")  # evaluated on test: never used for selection
    assert not (out / ckpt.BEST).exists() and len(ckpt.list_generations(out)) == 1


# ----- 3. no silent overwrite; 4. one process at a time; 5. leftovers -------------------------------


def test_existing_run_is_not_overwritten_unless_asked(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, "--epochs", "1")
    before = tree_state(out)
    res = train(data, out, "--epochs", "1", code=2)
    text = " ".join(res.output.split())
    assert "already holds a run" in text and f"--resume {out}" in text and "--overwrite" in text
    assert tree_state(out) == before
    train(data, out, "--epochs", "2", "--overwrite")
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    assert [ckpt.verify(g)["epoch"] for g in ckpt.list_generations(out)] == [2]


def test_second_process_on_a_run_dir_exits_2_naming_the_holder_then_a_stale_lock_is_taken(data, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cifarbench.engine.rundir import RunDirLock; "
         f"RunDirLock({str(out)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = train(data, out, "--epochs", "1", code=2)
        assert f"in use by another cifarbench process (PID {holder.pid})" in " ".join(res.output.split())
        assert not (out / ckpt.SIDECAR).exists()
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # a dead holder's PID: stale
    train(data, out, "--epochs", "1")


def test_leftover_temp_files_are_removed_on_start_and_resume(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".model.safetensors.abc.tmp").write_bytes(b"x" * 100)
    train(data, out, "--epochs", "1")
    assert not (out / ".model.safetensors.abc.tmp").exists()
    (out / ".metrics.csv.def.tmp").write_text("x")
    (out / ckpt.GENERATIONS / ".new-xyz").mkdir()
    (out / ckpt.GENERATIONS / ".new-xyz" / ckpt.WEIGHTS).write_bytes(b"x")
    res = invoke(["train", "--resume", str(out), "--epochs", "2", "--no-record"])
    assert res.exit_code == 0, res.output
    assert not [p for p in out.rglob(".*") if p.name != ".lock"]


# ----- 7. metrics stay true across a mid-epoch resume ------------------------------------------


def test_mid_epoch_resume_records_the_uninterrupted_epoch_row(data, tmp_path, monkeypatch):
    from cifarbench.backends.torch_backend import TorchBackend

    ref, out = tmp_path / "ref", tmp_path / "int"
    train(data, ref, "--epochs", "2")
    original, calls = TorchBackend.train_step, {"n": 0}

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # 48 / 16 = 3 steps per epoch: epoch 2, its second step
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(TorchBackend, "train_step", interrupting)
    train(data, out, "--epochs", "2", code=130)
    monkeypatch.setattr(TorchBackend, "train_step", original)
    assert json.loads((out / ckpt.SIDECAR).read_text())["partial_epoch"]["count"] == 16
    res = invoke(["train", "--resume", str(out), "--no-record"])
    assert res.exit_code == 0, res.output
    a, b = rows(ref)[1], rows(out)[1]
    assert b["train_acc"] == a["train_acc"]  # integer counts
    # torch sums the epoch's per-step losses (identical in both runs: same weights, same batches) in
    # float32 on the device, each addition off by at most u = 2^-24 of the running sum: over S = 3 steps
    # a sum is within (S - 1) u of the exact one; the resumed row adds two shorter float32 sums in float64.
    # The two rows differ by at most twice that.
    steps = 3
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2 * (steps - 1) * 2.0**-24, abs=0)
    assert (b["eval_loss"], b["eval_acc"]) == (a["eval_loss"], a["eval_acc"])


# ----- 9. divergence, empty splits, non-finite weights -----------------------------------------


def test_divergence_exits_1_in_one_line_and_saves_nothing_non_finite(data, tmp_path):
    out = tmp_path / "run"
    res = train(data, out, "--epochs", "2", "--lr", "1e30", code=1)  # (inf itself is refused up front)
    assert one_line_error(res).startswith("error: diverged at epoch 1 (loss nan): lower --lr")
    assert not ckpt.has_checkpoint(out)


def test_empty_test_split_is_refused_up_front(tmp_path):
    empty = "npz:" + str(write_npz(tmp_path / "e.npz", n_train=48, n_test=0))
    res = invoke(["train", "--dataset", empty, *FAST, "--epochs", "1", "-o", str(tmp_path / "run")])
    assert res.exit_code == 2 and "test split" in one_line_error(res) and "empty" in res.output
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_test_warns_about_non_finite_weights(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, "--epochs", "1")
    ck = ckpt.load_checkpoint(out)
    state = dict(ck.state)
    name = next(iter(state))
    state[name] = np.full_like(state[name], np.nan)
    ckpt.save_checkpoint(tmp_path / "nan", state, ck.meta)
    res = invoke(["test", str(tmp_path / "nan")])
    assert res.exit_code == 0 and f"{state[name].size} non-finite weight values" in " ".join(res.output.split())
    res = invoke(["test", str(out)])
    assert "non-finite" not in res.output


# ----- 12. file modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_the_umask_respecting_mode(data, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        train(data, out, "--epochs", "1")
        atomic.write_bytes(tmp_path / "cache-like.npy", b"x")
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink() and p.name != ".lock"]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}
    assert oct((tmp_path / "cache-like.npy").stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert {oct(g.stat().st_mode & 0o777) for g in ckpt.list_generations(out)} == {oct(0o777 & ~umask)}
