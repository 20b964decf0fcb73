"""Shared fixtures: tiny data sets in the official/npz formats, the shared data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _private_parse_cache(tmp_path_factory):
    """Parsed-data caches go to a folder of the test session, never to the user's cache dir
    (subprocesses started by tests inherit it through the environment)."""
    import os

    old = os.environ.get("CIFARBENCH_CACHE")
    os.environ["CIFARBENCH_CACHE"] = str(tmp_path_factory.mktemp("parse-cache"))
    yield
    if old is None:
        os.environ.pop("CIFARBENCH_CACHE", None)
    else:
        os.environ["CIFARBENCH_CACHE"] = old


def invoke(args, env=None):
    """Run the CLI in-process: no traceback may reach the output, and any exception is a clean exit."""
    from typer.testing import CliRunner

    from cifarbench.cli import app

    res = CliRunner().invoke(app, args, env=env)
    assert "Traceback" not in res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.exception
    return res


def tree_state(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``folder`` with its size, mtime and mode: equal before and after means untouched."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns, p.lstat().st_mode)
            for p in sorted(folder.rglob("*"))} | {".": (0, folder.stat().st_mtime_ns, folder.stat().st_mode)}


def write_npz(path: Path, n_train: int = 96, n_test: int = 40, classes: int = 4, size: int = 32,
              channels: int = 3, seed: int = 0) -> Path:
    """A small learnable data set: each class has its own mean colour, plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(40, 216, size=(classes, channels))

    def split(n):
        y = rng.integers(0, classes, n)
        x = centres[y][:, None, None, :] + rng.normal(0, 30, size=(n, size, size, channels))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    xtr, ytr = split(n_train)
    xte, yte = split(n_test)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte,
             class_names=np.array([f"class{i}" for i in range(classes)]))
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> str:
    return "npz:" + str(write_npz(tmp_path / "tiny.npz"))


@pytest.fixture(autouse=True)
def _results_db(tmp_path_factory, monkeypatch):
    """Every test records into its own temporary results database, never the user's data dir."""
    monkeypatch.setenv("CIFARBENCH_RESULTS_DB", str(tmp_path_factory.mktemp("resultsdb") / "results.db"))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty results database: SQLite always; PostgreSQL where $CIFARBENCH_TEST_PG_URL names a server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    import os
    import uuid

    base = os.environ.get("CIFARBENCH_TEST_PG_URL")
    if not base:
        pytest.skip("no PostgreSQL server: set CIFARBENCH_TEST_PG_URL (.ci/run starts one)")
    sa = pytest.importorskip("sqlalchemy")
    name = f"cbtest_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def drawn(monkeypatch):
    """Each figure as it is saved: path name -> matplotlib Figure (inspected for what is drawn)."""
    from cifarbench.report import plots

    figures = {}
    save = plots._save

    def keep(fig, path):
        out = save(fig, path)
        figures[out.name] = fig
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return figures


@pytest.fixture
def unsaved(monkeypatch):
    """Each figure as it would be saved, not rendered (what is drawn is in the Figure; no PNG is needed)."""
    from cifarbench.report import plots

    figures = {}

    def keep(fig, path):
        figures[Path(path).name] = fig
        plots._plt().close(fig)
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def backend_or_skip(name: str, options):
    """A CPU backend of ``name``, or the test is skipped (not installed, or no usable CPU device here)."""
    from cifarbench.backends import create_backend, load_backend_class
    from cifarbench.errors import BackendUnavailable

    try:
        cls = load_backend_class(name)
    except BackendUnavailable as exc:
        pytest.skip(exc.message)
    if cls.probe().get("cpu", "no cpu") is not None:
        pytest.skip(f"{name} has no usable cpu device here")
    return create_backend(name, "cpu", options, 0)
