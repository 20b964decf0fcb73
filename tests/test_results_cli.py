"""`train` and `bench` record into the results database; `cifarbench results ...` reads it back."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifarbench.cli import app

from results_data import bench_doc, machine, throughput_row, training_row, write

sa = pytest.importorskip("sqlalchemy")
runner = CliRunner()
TRAIN = ["--epochs", "2", "--batch-size", "16", "--eval-batch-size", "64", "--backend", "torch", "--device", "cpu",
         "--model", "cnn"]
TINY = ["--warmup-steps", "1", "--steps", "2", "--repeats", "2", "-b", "4", "--eval-batch-size", "8"]


def cli(*args, ok=True):
    res = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    return res


def listed(*filters) -> list[dict]:
    return json.loads(cli("results", "list", "--json", *filters).stdout)


def test_train_and_bench_record_what_they_wrote(tiny_npz, tmp_path):
    pytest.importorskip("torch")
    db_file = Path(os.environ["CIFARBENCH_RESULTS_DB"])
    cli("train", "--dataset", tiny_npz, *TRAIN, "-o", tmp_path / "run")
    log = json.loads((tmp_path / "run" / "run_log.json").read_text())
    cli("bench", "--synthetic", "--dataset", "mnist", "--backend", "numpy", *TINY, "-o", tmp_path / "b")
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert db_file.is_file()
    rows = listed()
    assert [r["kind"] for r in rows] == ["train", "throughput"]
    train, thr = rows
    assert train["accuracy"] == pytest.approx(log["results"]["overall_accuracy"])
    assert train["images_per_s"] == pytest.approx(log["results"]["images_per_s"])
    assert (train["backend"], train["device"], train["model"], train["epochs"]) == ("torch", "cpu", "cnn", 2)
    assert train["fingerprint_id"] == log["fingerprint_id"] and train["source"] == "train"
    git = log["fingerprint"]["software"]["git"]
    assert train["git_commit"] == (git or {}).get("commit") and train["code_version"] == log["fingerprint"]["software"]["cifarbench"]
    row = bench["rows"][0]
    assert thr["images_per_s"] == pytest.approx(row["train_ips"]["median"])
    assert (thr["images_per_s_min"], thr["images_per_s_max"]) == pytest.approx((row["train_ips"]["min"], row["train_ips"]["max"]))
    full = json.loads(cli("results", "show", train["id"]).stdout)
    assert full["config"]["epochs"] == 2 and full["fingerprint"]["fingerprint_id"] == log["fingerprint_id"]
    assert len(full["data"]["history"]) == 2
    # a copy of these files imported (e.g. on another machine's database) are duplicates here
    res = cli("results", "import", tmp_path / "run" / "run_log.json", tmp_path / "b", tmp_path / "b" / "run_log.json")
    assert "imported 0 new, skipped 3 duplicates" in res.output and len(listed()) == 2


def test_failure_to_record_keeps_the_run(tiny_npz, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CIFARBENCH_RESULTS_DB", str(blocker / "sub" / "results.db"))  # cannot be created
    res = cli("train", "--dataset", tiny_npz, *TRAIN, "--epochs", "1", "-o", tmp_path / "run")
    assert "results not recorded" in res.output and "results import" in res.output
    assert (tmp_path / "run" / "run_log.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
    good = tmp_path / "good.db"
    cli("train", "--dataset", tiny_npz, *TRAIN, "--epochs", "1", "-o", tmp_path / "run2", "--no-record",
        "--results-db", good)
    assert not good.exists()
    cli("results", "import", tmp_path / "run", "--results-db", good)  # recorded later, as the warning says
    assert len(listed("--results-db", good)) == 1


@pytest.fixture
def any_db(db_url, monkeypatch):
    """The results commands on SQLite and, where one is given, on PostgreSQL."""
    monkeypatch.setenv("CIFARBENCH_RESULTS_DB", db_url)
    return db_url


def _populate(tmp_path):
    """Two machines; torch and numpy throughput repeated on each; training rows with seeds."""
    here, there = machine(), machine("labhost")
    files = []
    for k, fp in enumerate((here, there)):
        for rep in range(2):
            rows = [throughput_row("torch", [0.5 + 0.1 * rep + k, 0.4 + k]), throughput_row("numpy", [2.0 + rep, 2.5])]
            files.append(write(tmp_path / f"m{k}r{rep}" / "bench.json",
                               bench_doc(rows, f"2026-11-2{rep}T10:0{k}:00+00:00", fp)))
    files.append(write(tmp_path / "train" / "bench.json", bench_doc(
        [training_row("torch", [0.8, 0.9], [10.0, 12.0]), training_row("numpy", [0.7, 0.74, 0.78], [40.0, 44.0, 48.0])],
        "2026-12-01T09:00:00+00:00", here, mode="training")))
    cli("results", "import", *files)
    return here, there


def test_list_filters(tmp_path, any_db):
    here, there = _populate(tmp_path)
    assert len(listed()) == 10
    assert {r["backend"] for r in listed("--backend", "numpy")} == {"numpy"} and len(listed("--backend", "numpy")) == 5
    assert len(listed("--machine", there["fingerprint_id"][:6])) == 4 and len(listed("--machine", "labhost")) == 4
    assert len(listed("--kind", "training")) == 2
    assert len(listed("--since", "2026-11-21")) == 6 and len(listed("--until", "2026-11-20")) == 4
    assert len(listed("--model", "nope")) == 0 and len(listed("--limit", "3")) == 3
    res = cli("results", "list", "--since", "yesterday", ok=False)
    assert res.exit_code == 2 and "--since takes a date" in res.output and "Traceback" not in res.output


def test_compare_pools_repeats_and_seeds(tmp_path, any_db):
    here, _ = _populate(tmp_path)
    res = json.loads(cli("results", "compare", "--machine", here["fingerprint_id"], "--json").stdout)
    g = {(x["kind"], x["backend"]): x for x in res["groups"]}
    thr = g[("throughput", "torch")]
    # medians over the two repeats' medians; whiskers over all of their windows
    meds = [statistics.median([64 / 0.5, 64 / 0.4]), statistics.median([64 / 0.6, 64 / 0.4])]
    assert thr["n"] == 2 and thr["images_per_s"] == pytest.approx(statistics.median(meds))
    assert thr["images_per_s_min"] == pytest.approx(64 / 0.6) and thr["images_per_s_max"] == pytest.approx(64 / 0.4)
    tr = g[("training", "numpy")]  # pooled over seeds: exactly the statistics of the raw accuracies
    assert tr["accuracy"] == pytest.approx(statistics.fmean([0.7, 0.74, 0.78]))
    assert tr["accuracy_std"] == pytest.approx(statistics.stdev([0.7, 0.74, 0.78])) and tr["accuracy_n"] == 3
    slowest = min((x for x in res["groups"] if x["images_per_s"]), key=lambda x: x["images_per_s"])
    assert slowest["baseline"] and slowest["relative"] == 1.0
    assert thr["relative"] == pytest.approx(thr["images_per_s"] / slowest["images_per_s"])
    by_time = json.loads(cli("results", "compare", "--kind", "training", "--metric", "time", "--baseline", "numpy",
                             "--json").stdout)
    t = {x["backend"]: x for x in by_time["groups"]}
    assert t["torch"]["relative"] == pytest.approx(44.0 / 11.0)  # speed-up: baseline's median time / torch's
    table = cli("results", "compare", "--backend", "torch").stdout
    assert "relative" in table and "(base)" in table
    bad = cli("results", "compare", "--baseline", "mlx", ok=False)
    assert bad.exit_code == 2 and "matches no compared row" in bad.output


def test_pooled_std_matches_raw_samples():
    from cifarbench.results.analysis import pooled

    a, b = [0.1, 0.3, 0.35], [0.5, 0.52]
    n, m, s = pooled([(3, statistics.fmean(a), statistics.stdev(a)), (2, statistics.fmean(b), statistics.stdev(b))])
    assert n == 5 and m == pytest.approx(statistics.fmean(a + b)) and s == pytest.approx(statistics.stdev(a + b))


def test_export_and_reimport(tmp_path, any_db):
    _populate(tmp_path)
    csv_text = cli("results", "export", "--backend", "torch").stdout
    assert csv_text.splitlines()[0].startswith("id,content_hash") and len(csv_text.splitlines()) == 6
    md = cli("results", "export", "-f", "md", "--kind", "training").stdout
    assert md.count("\n") == 4 and "| training |" in md
    out = tmp_path / "all.json"
    cli("results", "export", "-f", "json", "-o", out)
    other = tmp_path / "other.db"
    res = cli("results", "import", out, "--results-db", other)
    assert "imported 10 new" in res.output
    assert {r["content_hash"] for r in listed("--results-db", other)} == {r["content_hash"] for r in listed()}
    assert "skipped 10 duplicates" in cli("results", "import", out, "--results-db", other).output
    assert len(json.loads(cli("results", "show", "1", "--results-db", other).stdout)["fingerprint"]["hardware"]) > 3


def test_bad_input_is_one_line(tmp_path):
    for args, text in ((["results", "show", "999"], "no result with id 999"),
                       (["results", "import", tmp_path / "none.json"], "no such file"),
                       (["results", "export", "-f", "xml"], "--format must be"),
                       (["results", "list", "--results-db", "nosuch+x://h/db"], "no driver")):
        res = cli(*args, ok=False)
        assert res.exit_code == 2 and text in res.output and "Traceback" not in res.output, res.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    for url in (blocker / "x.db", "postgresql+psycopg://nobody@/db?host=/nonexistent&port=1"):
        res = cli("results", "list", "--results-db", url, ok=False)
        assert res.exit_code == 1 and "results database" in res.output and "Traceback" not in res.output, res.output
    write(tmp_path / "x.json", {"hello": 1})
    res = cli("results", "import", tmp_path / "x.json", ok=False)
    assert res.exit_code == 2 and "not a bench.json" in res.output


def test_help_imports_no_database_framework_or_tracker():
    import subprocess
    import sys

    code = ("import sys\nfrom cifarbench.cli import main\n"
            "for a in (['--help'], ['results', '--help'], ['report', '--help'], ['train', '--help']):\n"
            "    try:\n        main(a)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('sqlalchemy', 'torch', 'mlx', 'cupy', 'matplotlib', 'tensorboard', 'mlflow', "
            "'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
