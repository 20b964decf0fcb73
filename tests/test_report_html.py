"""`cifarbench report`: the page's content, and the page rendered in headless Chromium (skipped only
where no Chromium is installed; .ci/run installs Debian's)."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cifarbench.cli import app

from results_data import bench_doc, machine, throughput_row, training_row, write

pytest.importorskip("sqlalchemy")
runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")
GROUPS = 6  # what _populate stores: 2 machines x (torch, numpy) throughput + torch, numpy training


def _populate(tmp_path) -> None:
    here, there = machine(), machine("labhost")
    files = []
    for k, fp in enumerate((here, there)):
        rows = [throughput_row("torch", [0.05 * (k + 1), 0.04 * (k + 1), 0.06 * (k + 1)]),
                throughput_row("numpy", [2.0 + k, 2.5 + k, 3.0 + k])]
        files.append(write(tmp_path / f"m{k}.json", bench_doc(rows, f"2026-11-2{k}T10:00:00+00:00", fp)))
    files.append(write(tmp_path / "tr.json", bench_doc(
        [training_row("torch", [0.8, 0.9], [10.0, 12.0]), training_row("numpy", [0.7, 0.78], [40.0, 48.0])],
        "2026-12-01T09:00:00+00:00", here, mode="training")))
    res = runner.invoke(app, ["results", "import", *map(str, files)])
    assert res.exit_code == 0, res.output


def _report(tmp_path, *extra) -> Path:
    _populate(tmp_path)
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return out


def test_report_is_self_contained_with_the_expected_content(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("CIFARBENCH_RESULTS_DB", db_url)  # SQLite, and PostgreSQL where one is given
    pytest.importorskip("matplotlib")
    page = _report(tmp_path, "--target-acc", "0.5").read_text()
    assert page.count("<svg") == 2  # throughput bars and accuracy curves, inline
    assert len(re.findall(r"<tbody>.*?</tbody>", page, re.S)) == 1
    assert page.split("<tbody>")[1].count("<tr") == GROUPS
    assert 'class="machine"' in page and page.count('class="machine"') == 2 and "labhost" in page
    # nothing fetched at view time: no external script, style, image or font
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"url\((?!#)", page)  # only the SVGs' own clip paths, url(#id)
    # time to 50% from the curves: each seed reaches it at its last epoch (acc/2 < 0.5 <= acc) -> median time
    assert 'data-v="11"' in page and 'data-v="44"' in page


def test_report_needs_results(tmp_path):
    res = runner.invoke(app, ["report", "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "nothing to report" in res.output


def _browse(tmp_path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(dir=tmp_path, prefix="chromium-")
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True,
                          text=True, timeout=240)


def _console(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@needs_chromium
def test_console_check_catches_script_errors(tmp_path):
    """The check below must be able to fail: a page that throws is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>throw new Error('on purpose')</script></body></html>")
    res = _browse(tmp_path, bad.as_uri(), "--dump-dom")
    assert any("on purpose" in ln for ln in _console(res.stderr)), res.stderr[-2000:]


@needs_chromium
def test_report_renders_in_chromium(tmp_path):
    pytest.importorskip("matplotlib")
    import numpy as np
    from PIL import Image

    page = _report(tmp_path)
    res = _browse(tmp_path, page.as_uri(), "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    assert f'data-ready="{GROUPS}"' in dom, "the script did not run to its end"
    assert 'data-errors="' not in dom and _console(res.stderr) == [], _console(res.stderr)
    body = dom.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr") == GROUPS and body.count("labhost") == 2
    # sorting runs in the browser: by images/s ascending (column 9) the slowest numpy row comes first
    res = _browse(tmp_path, page.as_uri() + "#sort=9:asc", "--dump-dom")
    rows = res.stdout.split("<tbody>")[1].split("</tr>")[:GROUPS]
    values = [float(re.findall(r'data-v="([^"]*)"', r)[2] or "inf") for r in rows]  # batch, runs, images/s
    assert values == sorted(values) and 'data-backend="numpy"' in rows[0]
    shot = tmp_path / "shot.png"
    res = _browse(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1400,1800")
    assert shot.is_file(), res.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    ink = float((px.sum(axis=2) < 600).mean())
    assert ink > 0.02, f"page looks blank ({ink:.3%} non-white)"
    torch_red = int((np.abs(px - [0xD1, 0x49, 0x5B]).max(axis=2) < 12).sum())  # the torch bars' colour
    assert torch_red > 500, "no torch-coloured bars drawn"
