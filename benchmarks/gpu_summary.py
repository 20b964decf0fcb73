"""Turn the GPU kit's outputs into the markdown tables issue #17's report asks for.

    python benchmarks/gpu_summary.py OUT_DIR [MORE_OUT_DIRS_OR_TARBALLS...] [-o summary.md]

OUT_DIR is what a device call returned ($OUT: raw-call1.tar.gz and/or raw-call2.tar.gz) or an
unpacked work folder (parts.json beside the raw files). Every figure comes from those files; a
part that did not run is listed with its reason. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tarfile
from pathlib import Path

GOALS = {"resnet18_train_ips": 90_000, "cnn_b512_train_ips": 150_000, "onecycle_s": 60.0, "onecycle_fp32_gap": 0.003}
CALL2_BENCH = ("bench-torch", "bench-cupy-cnn", "bench-cupy-resnet18", "bench-mlx-cnn", "bench-mlx-resnet18",
               "bench-mlx-compiled")
COMPILE_PARTS = ("bench-resnet18-default", "bench-resnet18-reduce-overhead", "bench-resnet18-max-autotune")


# ----- loading --------------------------------------------------------------------------------------------------
def load_call(source: Path) -> dict[str, bytes]:
    """File name (relative to the call's work folder) -> bytes, from a tarball or a folder."""
    files: dict[str, bytes] = {}
    if source.is_file():
        with tarfile.open(source) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    files[m.name.split("/", 1)[1] if "/" in m.name else m.name] = tar.extractfile(m).read()
    else:
        for p in source.rglob("*"):
            if p.is_file():
                files[str(p.relative_to(source))] = p.read_bytes()
    return files


def expand(sources: list[Path]) -> list[Path]:
    out = []
    for s in sources:
        if s.is_dir() and not (s / "parts.json").exists():
            found = sorted(s.glob("raw-call*.tar.gz"))
            if not found:
                raise SystemExit(f"{s}: no raw-call*.tar.gz and no parts.json")
            out += found
        else:
            out.append(s)
    return out


def _json(files: dict[str, bytes], name: str):
    raw = files.get(name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


# ----- formatting -----------------------------------------------------------------------------------------------
def num(x, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def pct(x, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


# ----- parsers --------------------------------------------------------------------------------------------------
def parse_airbench(text: str) -> dict:
    """airbench94's printed table: per run its TTA accuracy and time_seconds (the 'eval' row); warm-up apart."""
    runs, warm, current = [], [], None
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "run":
            header = cells
            continue
        if header is None or len(cells) != len(header):
            continue
        row = dict(zip(header, cells))
        if row["run"]:
            current = row["run"]
        if row.get("epoch") == "eval" and row.get("tta_val_acc"):
            rec = {"run": current, "accuracy": float(row["tta_val_acc"]), "time_s": float(row["time_seconds"])}
            (warm if current == "warmup" else runs).append(rec)
    m = re.search(r"Mean:\s*([0-9.]+)\s+Std:\s*([0-9.]+)", text)
    return {"runs": runs, "warmup": warm, "printed_mean": float(m.group(1)) if m else None,
            "printed_std": float(m.group(2)) if m else None}


def parse_sync(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        m = re.match(r"(\S+)\s+(fp32|bf16|fp16)\s+(\S+)\s+compile=(\S+)\s+(.*)", line)
        if m:
            rows.append(list(m.groups()))
    return rows


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compile_label(cfg: dict) -> str:
    if not cfg.get("compile") and cfg.get("compile_mode", "default") == "default":
        return "off"
    return cfg.get("compile_mode") or "default"


# ----- sections -------------------------------------------------------------------------------------------------
def section_machine(calls: dict[int, dict]) -> list[str]:
    out = []
    for c, files in sorted(calls.items()):
        env = _json(files, "env.json") or {}
        gpu = env.get("gpu") or {}
        smi = (env.get("nvidia_smi") or "").splitlines()
        pk = env.get("packages", {})
        bits = [f"GPU **{gpu.get('name', 'none')}**" + (f" ({gpu.get('memory_gib')} GiB, {gpu.get('sms')} SMs, "
                                                       f"sm_{gpu.get('capability', '').replace('.', '')})" if gpu else ""),
                f"python {env.get('python', '?')}", f"torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}, "
                f"cuDNN {env.get('cudnn')})"]
        bits += [f"{k} {v}" for k, v in pk.items() if k in ("triton", "cupy-cuda13x", "cupy-cuda12x", "mlx", "mlx-cuda-13")]
        out.append(f"- call {c}: " + ", ".join(bits))
        if len(smi) > 1:
            out.append(f"  - nvidia-smi: `{smi[1]}` ({smi[0]})")
    return out


def section_sync(files: dict[str, bytes]) -> list[str]:
    text = files.get("sync.txt", b"").decode(errors="replace")
    rows = parse_sync(text)
    if rows:
        return [table(["model", "precision", "optimizer", "compile", "no host sync inside train_step"], rows)]
    return [f"No-host-sync check: {text.strip() or 'no output'}"]


def bench_rows(files: dict[str, bytes], name: str) -> list[dict]:
    res = _json(files, f"{name}.out")
    if not res:
        return []
    mode = compile_label(res.get("config", {}))
    return [{**r, "compile_label": mode, "part": name} for r in res.get("rows", [])]


def goal_for(row: dict) -> tuple[str, bool | None]:
    ips = row["train_ips"]["median"]
    if row["model"] == "resnet18" and row.get("device") == "cuda":
        return "≥ 90k", ips >= GOALS["resnet18_train_ips"]
    if row["model"] == "cnn" and row["batch_size"] == 512 and row.get("device") == "cuda":
        return "≥ 150k", ips >= GOALS["cnn_b512_train_ips"]
    return "", None


def section_throughput(files: dict[str, bytes], parts: dict[str, dict]) -> list[str]:
    names = ["bench-cnn", "bench-resnet18-eager", *COMPILE_PARTS]
    rows = [r for n in names for r in bench_rows(files, n)]
    out = []
    if rows:
        body = []
        for r in rows:
            goal, ok = goal_for(r)
            t, e = r["train_ips"], r["eval_ips"]
            body.append([r["model"], r["precision"], r["batch_size"], r["compile_label"],
                         f"{num(t['median'])} ({num(t['min'])}–{num(t['max'])})", num(e["median"]),
                         num(r["warmup_s"], 1), num(r.get("eval_warmup_s"), 1), f"{goal} {verdict(ok)}" if goal else ""])
        out.append(table(["model", "precision", "batch", "compile", "train img/s median (min–max)", "eval img/s",
                          "warm-up s (train)", "warm-up s (eval)", "goal"], body))
        for name in names:
            for skipped in (_json(files, f"{name}.out") or {}).get("skipped", []):
                why = skipped.get("reason", skipped) if isinstance(skipped, dict) else skipped
                out.append(f"- {name}: not run: {why}")
        n = rows[0]["train_ips"]["n"]
        out.append(f"\nMedian of {n} timed windows of {rows[0].get('images_per_window', '?')} images after the warm-up "
                   "steps (compile/autotune: the warm-up columns); synthetic data already on the device.")
    else:
        out.append("No throughput figures (see the parts table).")
    out += ["", "### Compile modes: resnet18 (batch 1024 on the GPU), one process per mode", ""]
    crow = []
    best = None
    for name in COMPILE_PARTS:
        mode = name.split("resnet18-", 1)[1]
        p = parts.get(name, {})
        r = next(iter(bench_rows(files, name)), None)
        if r:
            ips = r["train_ips"]["median"]
            crow.append([mode, num(ips), num(r["eval_ips"]["median"]), num(r["warmup_s"], 1),
                         num(r.get("eval_warmup_s"), 1), num(p.get("wall_s"), 0), p.get("status", "?")])
            if best is None or ips > best[1]:
                best = (mode, ips, r["warmup_s"])
        else:
            crow.append([mode, "–", "–", "–", "–", num(p.get("wall_s"), 0) if p.get("wall_s") else "–",
                         f"{p.get('status', 'not run')}: {p.get('reason', '')}".rstrip(": ")])
    out.append(table(["mode", "train img/s", "eval img/s", "compile s (first train step)", "compile s (first eval)",
                      "part wall s", "status"], crow))
    if best:
        out.append(f"\nFastest mode: **{best[0]}** ({num(best[1])} img/s train; its first step, where it compiles, "
                   f"took {num(best[2], 1)} s).")
    return out


def section_speedrun(files: dict[str, bytes], parts: dict[str, dict]) -> list[str]:
    rows, ours = [], []
    for name in ("speedrun-muon", "speedrun", "speedrun-compiled"):
        sr = _json(files, f"{name}.json")
        if not sr or not sr.get("runs"):
            if name in parts:
                p = parts[name]
                rows.append([f"cifarbench `{name.removesuffix('-compiled')}` ({name})", "0", "–", "–", "–", "–",
                             f"{p.get('status')}: {p.get('reason', '')}"])
            continue
        acc = mean_std([r["test_accuracy"] for r in sr["runs"]])
        tim = mean_std([r["timed_s"] for r in sr["runs"]])
        warm = [r["warmup_s"] for r in sr["warmup_runs"]] + [r["warmup_s"] for r in sr["runs"]]
        ev = mean_std([r["eval_s"] for r in sr["runs"]])[0]
        setup = mean_std([r["setup_s"] for r in sr["runs"]])[0]
        label = f"cifarbench `{sr.get('recipe', 'speedrun')}` {sr['precision']}, compile {sr['compile_mode']}"
        ours.append((label, acc, tim))
        first = sr["warmup_runs"][0]["warmup_s"] if sr["warmup_runs"] else None
        rows.append([label, str(len(sr["runs"])), f"{pct(acc[0])} ± {pct(acc[1])}", f"{num(tim[0], 2)} ± {num(tim[1], 2)}",
                     f"{num(first, 1)} / {num(statistics.fmean(warm[1:]) if len(warm) > 1 else None, 2)}",
                     f"eval/epoch {num(ev, 2)} s, setup {num(setup, 1)} s",
                     f"{sr['runs'][0]['epochs']} epochs, batch {sr['runs'][0]['batch_size']}, "
                     f"{sr['runs'][0]['train_images']:,} train images"])
    air = parse_airbench(files.get("airbench.log", b"").decode(errors="replace"))
    air_acc = air_tim = None
    if air["runs"]:
        air_acc = mean_std([r["accuracy"] for r in air["runs"]])
        air_tim = mean_std([r["time_s"] for r in air["runs"]])
        wall = parts.get("airbench", {}).get("wall_s")
        rows.append(["airbench94_muon.py (the record's code)", str(len(air["runs"])),
                     f"{pct(air_acc[0])} ± {pct(air_acc[1])}", f"{num(air_tim[0], 2)} ± {num(air_tim[1], 2)}",
                     f"{num(air['warmup'][0]['time_s'], 1) if air['warmup'] else '–'} / –",
                     f"part wall {num(wall, 0)} s (decode, compile, runs)",
                     f"printed Mean {air['printed_mean']} Std {air['printed_std']}"])
    elif "airbench" in parts:
        p = parts["airbench"]
        rows.append(["airbench94_muon.py", "0", "–", "–", "–", "–", f"{p.get('status')}: {p.get('reason', '')}"])
    out = [table(["program", "runs", "test accuracy mean ± std", "timed s/run mean ± std",
                  "warm-up s (warm-up run / per timed run)",
                  "not in the timed s", "notes"], rows)] if rows else ["No speedrun figures."]
    out.append("\nTimed s/run: training steps plus the final test-time-augmented test, as airbench counts "
               "(airbench also times its whitening init; ours computes it on the host in setup). Each run's first "
               "step per batch shape (compile, cuDNN autotuning) is excluded and shown as warm-up.")
    if ours and air_acc:
        for label, acc, tim in ours:
            ok = acc[0] >= air_acc[0] and tim[0] < air_tim[0]
            out.append(f"- Goal (accuracy ≥ airbench's mean, less time per run), {label}: {verdict(ok)} "
                       f"({pct(acc[0])} vs {pct(air_acc[0])}; {num(tim[0], 2)} s vs {num(air_tim[0], 2)} s).")
    return out


def section_onecycle(files: dict[str, bytes], parts: dict[str, dict]) -> list[str]:
    rows, found = [], {}
    for name in ("onecycle", "onecycle-fp32"):
        s = _json(files, f"{name}.out")
        p = parts.get(name, {})
        if not s:
            if p:
                rows.append([name, "–", "–", "–", "–", "–", "–", "–", f"{p.get('status')}: {p.get('reason', '')}"])
            continue
        found[name] = s
        rows.append([name, s["precision"], s["epochs"], num(p.get("wall_s"), 1), num(s["total_time_s"], 1),
                     num(s["warmup_s"], 1), num(s["images_per_s"]), pct(s["test_accuracy"]), s.get("device_name", "")])
    out = [table(["run", "precision", "epochs", "command wall s", "trainer total s", "warm-up s", "median epoch img/s",
                  "test accuracy", "device"], rows)] if rows else ["No onecycle figures."]
    main = found.get("onecycle")
    if main and main["epochs"] == 40:
        out.append(f"- Goal < 60 s (trainer total): {verdict(main['total_time_s'] < GOALS['onecycle_s'])}")
        fp = found.get("onecycle-fp32")
        if fp:
            gap = abs(main["test_accuracy"] - fp["test_accuracy"])
            out.append(f"- Accuracy within 0.3 points of fp32: {verdict(gap <= GOALS['onecycle_fp32_gap'])} "
                       f"({100 * gap:.2f} points)")
    return out


def section_call2(files: dict[str, bytes], parts: dict[str, dict]) -> list[str]:
    out = ["### Throughput next to torch (synthetic data, fp32)", ""]
    rows = [r for n in CALL2_BENCH for r in bench_rows(files, n)]
    torch_ips = {(r["model"], r["batch_size"]): r["train_ips"]["median"] for r in rows if r["backend"] == "torch"}
    body = []
    for r in rows:
        ref = torch_ips.get((r["model"], r["batch_size"]))
        body.append([r["backend"], r["device"], r["model"], r["batch_size"], r["compile_label"],
                     num(r["train_ips"]["median"]), num(r["eval_ips"]["median"]), num(r["warmup_s"], 1),
                     f"{r['train_ips']['median'] / ref:.2f}x" if ref else "–"])
    for n in CALL2_BENCH:
        res = _json(files, f"{n}.out")
        for s in (res or {}).get("skipped", []):
            if isinstance(s, dict):
                body.append([s.get("backend", "?"), s.get("device", "?"), s.get("model", ""), "", "", "–", "–", "–",
                             f"not run: {s.get('reason', '')}"])
            else:
                body.append([str(s), "", "", "", "", "–", "–", "–", "not run"])
    out.append(table(["backend", "device", "model", "batch", "compile", "train img/s", "eval img/s", "warm-up s",
                      "vs torch"], body) if body else "No call-2 throughput figures.")
    out += ["", "### Same seed, same data: `resnet20`, AdamW 1e-3, seed 0, cifar10-jpeg 10k/2k subset", ""]
    trows, ref = [], None
    for b in ("torch", "cupy", "mlx"):
        s = _json(files, f"train-{b}.out")
        p = parts.get(f"train-{b}", {})
        if not s:
            if p:
                trows.append([b, "–", "–", "–", "–", "–", f"{p.get('status')}: {p.get('reason', '')}"])
            continue
        acc, n = s["test_accuracy"], s["test_images"]
        if b == "torch":
            ref = acc
        se = (acc * (1 - acc) / n) ** 0.5 if n else None
        trows.append([b, s.get("device_name", ""), pct(acc), f"{s['final_train_loss']:.4f}", num(s["total_time_s"], 1),
                      f"{100 * (acc - ref):+.2f}" if ref is not None else "–", f"{100 * se:.2f}" if se else "–"])
    out.append(table(["backend", "device", "test accuracy", "final train loss", "total s", "Δ vs torch (points)",
                      "binomial s.e. (points)"], trows) if trows else "No same-seed training runs.")
    ddp = _json(files, "ddp.json")
    out += ["", "### DDP code path: torchrun --nproc-per-node 1", ""]
    if ddp:
        out.append(table(["process group", "path ok", "device", "acc (ddp / plain)", "train loss (ddp / plain)",
                          "weights rel. diff"],
                         [[ddp["ddp"]["process_group"], "yes" if ddp["ok"] else "**no**", ddp["ddp"]["device_name"],
                           f"{pct(ddp['ddp']['test_accuracy'])} / {pct(ddp['plain']['test_accuracy'])}",
                           f"{ddp['ddp']['final_train_loss']:.4f} / {ddp['plain']['final_train_loss']:.4f}",
                           f"{ddp['weights_rel_diff']:.2e}" if ddp.get("weights_rel_diff") is not None else "–"]]))
    else:
        p = parts.get("ddp-nccl", {})
        out.append(f"Not run: {p.get('status', 'absent')} {p.get('reason', '')}".rstrip())
    return out


def section_muon_profile(files: dict[str, bytes], parts: dict[str, dict]) -> list[str]:
    """Issue 21, point 4: the optimizer's share of a speedrun-muon step (goal < 15%)."""
    rows = []
    for name in ("muon-profile", "muon-profile-compiled"):
        r = _json(files, f"{name}.json")
        if not r:
            p = parts.get(name, {})
            rows.append([name, "–", "–", "–", "–", "–", f"{p.get('status', 'absent')}: {p.get('reason', '')}"])
            continue
        prof = r.get("optimizer_share_profiler")
        rows.append([name, f"{r['batch_size']} {r['precision']}", num(r["step_ms"], 2), num(r["optimizer_ms"], 2),
                     pct(r["optimizer_share_clock"]), pct(prof) if prof is not None else "–",
                     f"{verdict(r['goal_met'])} (NS {r.get('ns_dtype', '')})"])
    return [table(["part", "batch, precision", "step ms", "optimizer ms", "share (clocks)", "share (profiler)",
                   "goal < 15%"], rows)]


def summarise(sources: list[Path]) -> str:
    calls: dict[int, dict] = {}
    metas: dict[int, dict] = {}
    for src in expand([Path(s) for s in sources]):
        files = load_call(src)
        meta = _json(files, "parts.json") or {}
        c = int(meta.get("call", 1))
        calls[c], metas[c] = files, meta
    if not calls:
        return "# GPU kit\n\nNothing to summarise.\n"
    parts = {c: {p["part"]: p for p in m.get("parts", [])} for c, m in metas.items()}
    lines = ["# GPU kit results (issue #17)", ""]
    if any(m.get("size") == "tiny" or m.get("device") != "cuda" for m in metas.values()):
        lines += ["**Dry run (SIZE=tiny and/or DEVICE=cpu): CPU-size figures that check the kit, not GPU results.**", ""]
    lines += section_machine(calls)
    lines += ["", "## Parts: what ran, how long, and why not", ""]
    prow = [[c, p["part"], p["status"], num(p.get("wall_s"), 1), num(p.get("timeout_s"), 0) if "timeout_s" in p else "–",
             p.get("reason", "")] for c, m in sorted(metas.items()) for p in m.get("parts", [])]
    lines.append(table(["call", "part", "status", "wall s", "budget s", "reason"], prow))
    if 1 in calls:
        f1, p1 = calls[1], parts[1]
        lines += ["", "## 1. No host sync inside training steps", ""] + section_sync(f1)
        lines += ["", "## 2. Throughput: `cifarbench bench`, torch", ""] + section_throughput(f1, p1)
        lines += ["", "## 3. `speedrun` and airbench on cifar10-jpeg, same call", ""] + section_speedrun(f1, p1)
        lines += ["", "## 4. `-c resnet18-onecycle` on cifar10-jpeg", ""] + section_onecycle(f1, p1)
    if 2 in calls:
        lines += ["", "## 5. MLX, CuPy and nccl (call 2)", ""] + section_call2(calls[2], parts[2])
    if 3 in calls:
        lines += ["", "## 6. `speedrun-muon` next to airbench, and Muon's share of a step (call 3, issue 21)", ""]
        lines += section_speedrun(calls[3], parts[3]) + [""] + section_muon_profile(calls[3], parts[3])
    pending = [f"call {c}: {p['part']} ({p['status']})" for c, m in sorted(metas.items()) for p in m.get("parts", [])
               if p["status"] != "ok"]
    lines += ["", "## Not measured", ""]
    lines += [f"- {x}" for x in pending] if pending else ["- everything in the kit ran."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", type=Path)
    ap.add_argument("-o", "--output", type=Path)
    args = ap.parse_args()
    text = summarise(args.sources)
    if args.output:
        args.output.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
