"""`cifarbench data download|verify|info`: fetch, check and describe data sets.

stdout carries the tables / JSON; progress, warnings and notes go to stderr.
"""

from __future__ import annotations

from typing import Optional

import typer

from cifarbench.cli._console import plain, print_wide
from cifarbench.errors import DataError

ALL = "all"

data_app = typer.Typer(
    help="Download, verify and describe data sets (cifar10, cifar100, mnist, fashion-mnist, mnist-mini, ...).",
    no_args_is_help=True,
)

DATA_DIR_HELP = "Dataset directory (default: $CIFARBENCH_DATA, else the user cache dir)."


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _downloadable() -> list[str]:
    from cifarbench.data.sources import SOURCES

    return list(SOURCES)


class _DownloadBars:
    """A rich progress bar per file on a terminal; one line per finished file otherwise."""

    def __init__(self) -> None:
        from cifarbench.cli._console import err_console

        self.console = err_console
        self.progress = None
        self.tasks: dict[str, int] = {}
        if err_console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                console=err_console,
            )

    def __enter__(self) -> "_DownloadBars":
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.progress is None:
            if done == 0:
                self.console.print(f"downloading {name} ...", highlight=False, markup=False)
            elif total and done >= total:
                self.console.print(f"downloaded {name} ({total / 1e6:.1f} MB)", highlight=False, markup=False)
            return
        if name not in self.tasks or done == 0:
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.progress.update(self.tasks[name], completed=done, total=total)


@data_app.command("download")
def download(
    dataset: str = typer.Argument("cifar10", help="Data set name, or 'all' for every downloadable one."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    mirror: Optional[list[str]] = typer.Option(
        None, "--mirror", help="Base URL to download from instead of the official hosts (repeatable)."
    ),
) -> None:
    """Download a data set (official URLs, md5-checked) and extract it under the data dir."""
    from cifarbench.cli._console import info, out_console
    from cifarbench.data import download_dataset
    from cifarbench.data.store import resolve_data_dir

    names = _downloadable() if dataset == ALL else [dataset]
    root = resolve_data_dir(data_dir)
    with _DownloadBars() as bars:
        for name in names:
            folder = download_dataset(name, root, progress=bars, mirrors=mirror or None)
            out_console.print(f"{name}: {folder}", highlight=False, soft_wrap=True, markup=False)
    info(plain(f"data dir: {root}"))


@data_app.command("verify")
def verify(
    dataset: str = typer.Argument(ALL, help="Data set name, or 'all'."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Check every file's md5 against the official release. Exit 1 if any differs or is missing."""
    from cifarbench.cli._console import info, print_json
    from cifarbench.data import verify_dataset
    from cifarbench.data.sources import canonical_name
    from cifarbench.data.store import resolve_data_dir

    names = [*_downloadable(), "mnist-mini"] if dataset == ALL else [canonical_name(dataset)]
    checks = []
    for name in names:
        rows = verify_dataset(name, data_dir)
        if dataset == ALL and rows and all(r.status == "missing" for r in rows):
            info(plain(f"{name}: not present"))  # absent data sets are not failures of `verify all`
            continue
        checks.extend(rows)
    if as_json:
        print_json([c.to_dict() for c in checks])
    else:
        _verify_table(checks, resolve_data_dir(data_dir))
    differ = sum(c.status == "mismatch" for c in checks)
    missing = sum(c.status == "missing" for c in checks)
    if differ or missing:
        raise DataError(
            f"of {len(checks)} files checked, {differ} differ from the official release and {missing} are missing",
            hint="a differing copy still loads (with a warning); missing files need `cifarbench data download`",
        )
    if not checks:
        info("nothing to verify")


def _verify_table(checks, root) -> None:
    import os

    from rich.table import Table

    table = Table("dataset", "file", "status", "md5 found", "md5 expected", box=None)
    style = {"ok": "green", "mismatch": "yellow", "missing": "red", "unchecked": "dim"}
    for c in checks:
        rel = os.path.relpath(c.path, root) if c.path.startswith(str(root)) else c.path
        expected = c.expected_md5 if c.status == "mismatch" else ("-" if not c.expected_md5 else "=")
        table.add_row(plain(c.dataset), plain(rel), f"[{style.get(c.status, '')}]{c.status}[/]", c.actual_md5 or "-",
                      expected)
    print_wide(table, width=240)


@data_app.command("info")
def info_cmd(
    dataset: str = typer.Argument(ALL, help="Data set name (or npz:PATH), or 'all'."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout (an object, or a list for 'all')."),
) -> None:
    """What is present (sizes, shapes, classes, mean/std), what each missing data set needs, and the data dir.

    Never downloads. The data dir (the cache) is --data-dir, else $CIFARBENCH_DATA, else the user cache dir.
    """
    from cifarbench.cli._console import print_json, warn
    from cifarbench.data import DATASET_NAMES, load_dataset
    from cifarbench.data.store import resolve_data_dir

    root = resolve_data_dir(data_dir)
    names = list(DATASET_NAMES) if dataset == ALL else [dataset]
    rows = []
    for name in names:
        try:
            ds = load_dataset(name, data_dir, download=False)
        except DataError as e:
            if dataset != ALL:
                raise
            rows.append({"name": name, "present": False, "error": e.message, **_requirements(name, root)})
            continue
        for w in ds.warnings:
            warn(w)
        rows.append({**ds.summary(), "present": True, **_requirements(name, root)})
    if as_json:
        print_json(rows if dataset == ALL else rows[0])
    else:
        from cifarbench.cli._console import out_console

        from cifarbench.data.cache import CACHE_ENV, cache_root

        out_console.print(f"data dir: {root} ({_data_dir_origin(data_dir)}); parsed arrays are cached in "
                          f"{cache_root() / 'parsed'} (${CACHE_ENV} moves it)", highlight=False, soft_wrap=True,
                          markup=False)
        _info_table(rows)


def _data_dir_origin(data_dir: Optional[str]) -> str:
    import os

    from cifarbench.data.store import DATA_ENV

    if data_dir:
        return "from --data-dir"
    return f"from ${DATA_ENV}" if os.environ.get(DATA_ENV) else f"the user cache dir; set --data-dir or ${DATA_ENV}"


def _requirements(name: str, root) -> dict:
    """What a data set needs on disk and where it goes (JSON fields of `data info`)."""
    from cifarbench.data.sources import DOWNLOAD_MB, canonical_name, needs, source_for

    canon = canonical_name(name)
    found = source_for(canon)
    if found is not None:
        source = found[0]
        return {"kind": "download", "needs": needs(source), "download_mb": DOWNLOAD_MB.get(source.key),
                "data_dir": str(root)}
    if canon == "mnist-mini":
        return {"kind": "embedded", "needs": "nothing (shipped inside the package)", "data_dir": None}
    if canon.startswith("npz:"):
        return {"kind": "file", "needs": f"the file {canon[4:]}", "data_dir": None}
    return {"kind": "generated", "needs": "nothing (generated from a seed)", "data_dir": None}


def _info_table(rows: list[dict]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table("dataset", "status", "train", "test", "shape", "classes", "mean", "std", "source / needs", box=None)
    for r in rows:
        if not r.get("present", True):
            size = f" ({r['download_mb']} MB download)" if r.get("download_mb") else ""
            table.add_row(r["name"], "[red]missing[/]", "-", "-", "-", "-", "-", "-",
                          f"needs {escape(r['needs'])}{size}")
            continue
        shape = "x".join(str(s) for s in r["image_shape"])
        mean, std = (",".join(f"{v:.3f}" for v in r[k]) for k in ("mean", "std"))
        status = {"download": "[green]present[/]", "file": "[green]present[/]"}.get(r.get("kind"), r.get("kind", ""))
        table.add_row(r["name"], status, str(r["train"]), str(r["test"]), shape, str(r["num_classes"]), mean, std,
                      escape(r["source"]))
    print_wide(table, width=240)
