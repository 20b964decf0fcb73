"""Multi-process (torchrun-style) training on 2 CPU ranks over gloo, against one process.

Ranks are forked from a forkserver that has imported torch once (so no rank pays the
several-second import again) with the environment torchrun would give them; each runs the real
`cifarbench train` command or the Trainer. A model without BatchNorm (lenet) must end with the
single-process weights: the shards' loss sums, weighted by world/global_batch and averaged by
DDP, are the global-batch mean gradient, so only float summation order differs (measured
max |dw| 5e-8 after 12 SGD steps; asserted within 1e-5 absolute + 1e-4 relative). With BatchNorm on CPU each
rank normalises with its own shard's statistics (SyncBatchNorm needs a GPU), so that run only
has to be consistent across ranks, not equal to one process.
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing as mp
import os
import pickle
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cifarbench.cli import app
from cifarbench.engine import distributed
from cifarbench.engine.distributed import DistEnv, detect, shard
from cifarbench.errors import UsageError

from conftest import write_npz

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover - torch builds without distributed
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORLD = 2
JOIN_TIMEOUT = 60
# 101 images in batches of 20: the last global batch holds one image, so rank 1 gets an empty shard
COMMON = ["--epochs", "2", "-b", "20", "--eval-batch-size", "16", "--opt", "sgd", "--lr", "0.05", "--momentum", "0.9",
          "--nesterov", "--weight-decay", "5e-4", "--label-smoothing", "0.1", "--augment", "crop+flip",
          "--backend", "torch", "--device", "cpu", "--seed", "3"]


# ----- pure logic ---------------------------------------------------------------------------
@pytest.mark.parametrize("start,stop,world", [(0, 20, 2), (40, 41, 2), (5, 12, 3), (0, 0, 4), (0, 7, 8), (10, 110, 6)])
def test_shards_tile_the_global_batch(start, stop, world):
    parts = [shard(start, stop, r, world) for r in range(world)]
    assert parts[0][0] == start and parts[-1][1] == stop
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # contiguous, in rank order
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_detect_reads_torchrun_environment():
    assert detect({}) is None
    assert detect({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None  # one process: plain run
    assert detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistEnv(3, 4, 1)
    assert not detect({"RANK": "1", "WORLD_SIZE": "2"}).is_main
    assert distributed.is_main_process({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="inconsistent"):
        detect({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UsageError, match="malformed"):
        detect({"RANK": "x", "WORLD_SIZE": "2"})


def test_other_backends_refuse_torchrun(tiny_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = CliRunner().invoke(app, ["train", "-m", "lenet", "--dataset", tiny_npz, "--backend", "numpy",
                                   "-o", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "needs --backend torch" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


# ----- forked ranks -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, workdir: str, job, args) -> None:
    """One rank: torchrun's environment, its own cwd and output files, then the job."""
    code = 1
    try:
        os.chdir(workdir)
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        torch.set_num_threads(1)
        out, err = open("stdout.txt", "w"), open("stderr.txt", "w")
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout, sys.stderr = out, err
        faulthandler.dump_traceback_later(JOIN_TIMEOUT - 10, exit=True)  # a hung rank says where it hangs
        job(*args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_ranks(tmp_path: Path, job, *args) -> list[Path]:
    """Run job(*args) on WORLD forked ranks; returns each rank's working directory.

    The ranks fork from a forkserver, not from this process: this process has run torch (its
    thread pools hold locks), and a child forked while another thread holds a lock can deadlock
    (seen: one rank hung in about 1 of 20 runs). The server imports torch and cifarbench once,
    single-threaded, so each rank still starts in a fraction of a second."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "cifarbench.cli", "cifarbench.engine.trainer"])
    port = _free_port()
    dirs = [tmp_path / f"rank{r}" for r in range(WORLD)]
    procs = []
    for r, d in enumerate(dirs):
        d.mkdir()
        procs.append(ctx.Process(target=_rank_main, args=(r, port, str(d), job, args)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=JOIN_TIMEOUT)
    for r, (p, d) in enumerate(zip(procs, dirs)):
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0, f"rank {r} failed:\n{(d / 'stderr.txt').read_text()[-3000:]}"
    return dirs


def _cli_job(argv):
    from cifarbench.cli import main

    main(argv)


def _trainer_job(overrides):
    """Train with the Trainer, then dump what this rank ended with (summary, weights)."""
    from cifarbench.config import build_config
    from cifarbench.engine.trainer import Trainer

    trainer = Trainer(build_config(None, overrides), run_dir=Path("run"))
    summary = trainer.run()
    state = trainer.backend.state_dict()
    distributed.shutdown()
    Path("result.pkl").write_bytes(pickle.dumps({"summary": summary, "state": state}))


def _load(run_dir: Path):
    from cifarbench.checkpoint import load_checkpoint

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return load_checkpoint(run_dir).state, rows


def test_two_ranks_match_one_process(tmp_path):
    data = "npz:" + str(write_npz(tmp_path / "d.npz", n_train=101, n_test=40, classes=4))
    argv = ["train", "-m", "lenet", "--dataset", data, *COMMON]
    # the single-process run first: it also imports everything a run needs, so the forked ranks start fast
    single = tmp_path / "single"
    res = CliRunner().invoke(app, argv + ["-o", str(single)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    ranks = run_ranks(tmp_path, _cli_job, argv + ["--json"])  # no -o: each rank's default run dir is under its cwd

    # rank 0 alone writes a run directory and prints; rank 1 is silent and writes nothing
    made = [sorted((d / "runs").glob("*")) if (d / "runs").exists() else [] for d in ranks]
    assert len(made[0]) == 1 and made[1] == []
    assert (ranks[1] / "stdout.txt").read_text() == "" and (ranks[1] / "stderr.txt").read_text() == ""
    printed = json.loads((ranks[0] / "stdout.txt").read_text())
    assert "x 2 ranks (gloo)" in printed["device_name"]


    w_dist, rows_dist = _load(made[0][0])
    w_one, rows_one = _load(single)
    assert set(w_dist) == set(w_one)
    for name in w_one:
        np.testing.assert_allclose(w_dist[name], w_one[name], rtol=1e-4, atol=1e-5, err_msg=name)
    for a, b in zip(rows_dist, rows_one):  # epoch metrics are global: all-reduced loss and counts, gathered logits
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_acc"] == b["train_acc"]
        assert a["eval_acc"] == b["eval_acc"]
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-4)
    assert printed["test"]["total"] == 40


def test_batchnorm_ranks_stay_consistent(tmp_path):
    """cnn has BatchNorm and dropout: per-rank BN statistics on CPU, running stats averaged each epoch."""
    data = "npz:" + str(write_npz(tmp_path / "d.npz", n_train=60, n_test=24, classes=4, size=16))
    overrides = {"model": "cnn", "dataset": data, "epochs": 1, "batch_size": 20, "eval_batch_size": 10, "opt": "sgd",
                 "lr": 0.05, "backend": "torch", "device": "cpu", "augment": ["flip"]}
    ranks = run_ranks(tmp_path, _trainer_job, overrides)
    res = [pickle.loads((d / "result.pkl").read_bytes()) for d in ranks]
    for name, value in res[0]["state"].items():  # parameters by DDP, BN buffers by the epoch-end average
        np.testing.assert_array_equal(value, res[1]["state"][name], err_msg=name)
    assert res[0]["summary"].test_accuracy == res[1]["summary"].test_accuracy
    assert res[0]["summary"].test["total"] == 24
    assert np.isfinite(res[0]["summary"].final_train_loss)
    assert (ranks[0] / "run" / "model.safetensors").is_file() and not (ranks[1] / "run").exists()


@pytest.mark.slow  # three fresh interpreters import torch: ~30 s on a busy 2-core machine
def test_real_torchrun_launcher(tmp_path):
    """The documented command line: torchrun (torch.distributed.run) starting `-m cifarbench train`."""
    import subprocess

    data = "npz:" + str(write_npz(tmp_path / "d.npz", n_train=101, n_test=40, classes=4))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "cifarbench", "train", "-m", "lenet", "--dataset", data, *COMMON, "-o", str(out), "--json"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # rank 0's summary alone: rank 1 printed nothing on stdout
    assert "x 2 ranks (gloo)" in summary["device_name"] and summary["test"]["total"] == 40
    # progress from rank 0 alone: one epoch line, and (the default --log-interval 10%, at most every
    # step) one line per step but the last, which its epoch line follows at once
    steps = int(re.search(r"2 epochs x (\d+) steps", proc.stderr).group(1))
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("epoch 2/2 |")]
    assert sum(" | step " in ln for ln in lines) == steps - 1 and sum(" | train acc " in ln for ln in lines) == 1
    assert (out / "model.safetensors").is_file() and (out / "run_log.json").is_file()
