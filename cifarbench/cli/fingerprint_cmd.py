"""`cifarbench fingerprint`: this machine and its software, as run_log.json."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from cifarbench.cli._console import info, out_console, print_json


def fingerprint(
    output: Path = typer.Option(Path("run_log.json"), "--output", "-o", help="Where to write the JSON."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON on stdout."),
) -> None:
    """Record OS, CPU, memory, GPUs, framework versions, threads and backend availability."""
    from cifarbench import fingerprint as fp_mod
    from cifarbench.atomic import write_json as atomic_write_json

    fp = fp_mod.collect()
    log = fp_mod.standalone_run_log(fp)
    atomic_write_json(output, log)
    if json_out:
        print_json(log)
    else:
        _summary(fp)
    info(f"wrote {escape(str(output))}")


def _summary(fp: dict) -> None:
    from cifarbench.fingerprint import memory_gib

    hw, sw = fp["hardware"], fp["software"]
    pk = sw["packages"]
    gpus = "; ".join(f"{g.get('name')} ({memory_gib(g)} GiB, "
                     f"{g.get('compute_capability') or g.get('metal_architecture') or '?'})"
                     for g in hw["gpus"]) or "none found"
    lines = [
        ("fingerprint", fp["fingerprint_id"]),
        ("os", f"{hw['os']} {hw['os_release']} ({hw['architecture']})"),
        ("cpu", f"{hw['cpu_model']} ({hw['physical_cores']} cores / {hw['logical_cores']} threads)"),
        ("memory", f"{memory_gib(hw)} GiB"),
        ("chip", hw["chip"] or "-"),
        ("gpus", gpus),
        ("python", sw["python"]),
        ("numpy", f"{pk.get('numpy')} ({(sw.get('numpy_blas') or {}).get('name', '?')} BLAS)"),
        ("torch", f"{pk.get('torch') or '-'} (CUDA {sw['torch_build'].get('cuda') or '-'}, cuDNN {sw['torch_build'].get('cudnn') or '-'})"),
        ("mlx", f"{pk.get('mlx') or '-'} (mlx-data {pk.get('mlx-data') or '-'})"),
        ("cupy", next((v for k, v in pk.items() if k.startswith("cupy") and v), "-")),
        ("cifarbench", f"{sw['cifarbench']} {(sw.get('git') or {}).get('commit', '')[:12]}"),
    ]
    for key, val in lines:
        out_console.print(f"[bold]{key:12s}[/] {escape(str(val))}", highlight=False)
    for a in fp["availability"]:
        mark = "[green]yes[/]" if a["available"] else "[red]no[/] "
        out_console.print(f"[bold]{'backend':12s}[/] {a['backend']:6s} {a['device']:5s} {mark} "
                          f"{'' if a['available'] else escape(a['reason'])}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("fingerprint")(fingerprint)
