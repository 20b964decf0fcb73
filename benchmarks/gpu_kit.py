"""The GPU measurement kit (issue #17): every accelerator path in one or two prepared calls.

    python benchmarks/gpu_kit.py run --call 1 [--size full|tiny] [--device cuda|cpu] [--deadline S] [--parts a,b]
    python benchmarks/gpu_kit.py list --call 1            # the parts, their caps and floors
    python benchmarks/gpu_kit.py decode SRC.npz DST.npz [--limit N --test-limit M]

`benchmarks/gpu_h200.sh` (call 1: torch) and `benchmarks/gpu_h200_call2.sh` (call 2: MLX, CuPy, nccl)
are the entry points, and `benchmarks/gpu_h200_muon.sh` (call 3: speedrun-muon next to the record, the
optimizer's profile; issue 21); benchmarks/GPU_RUNBOOK.md has the exact device calls.

Each part is one subprocess in its own process group, run in priority order. Its timeout is its
cap, cut to the time left before the deadline minus the floors of the core parts still to come
(but never under its own floor while that much time is left), so a slow part (a compile mode that
autotunes for minutes) cannot eat the parts after it; a part whose floor no longer fits is skipped
and says so. Raw outputs (JSON, CSV, logs) go to a
work folder that is packed into $OUT/raw-callN.tar.gz after every part (the device returns at most
8 files from $OUT, so one archive holds them all), next to parts.json and summary.md
(benchmarks/gpu_summary.py). Standard library only: the driver runs under the device's python3.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable


@dataclass
class Part:
    name: str
    cmd: list[str] | None          # argv, or None when the part cannot run here (reason says why)
    cap_s: float                   # longest this part may run
    floor_s: float                 # least time in which it can give a result
    core: bool = True              # core parts keep their floor reserved while earlier parts run
    stdout: str | None = None      # file (in the work folder) that takes stdout; default NAME.out
    reason: str = ""               # why cmd is None
    env: dict[str, str] = field(default_factory=dict)
    after: tuple[str, ...] = ()    # parts that must have succeeded first (else skipped)


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""
    tiny: bool
    device: str

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def window(self) -> list[str]:
        if self.tiny:
            return ["--warmup-steps", "1", "--steps", "2", "--repeats", "2", "--eval-batch-size", "16"]
        return ["--warmup-steps", "10", "--steps", "50", "--repeats", "5", "--eval-batch-size", "2000"]

    def batch(self, full: int) -> str:
        return str({64: 8, 512: 16, 1024: 16, 256: 8}.get(full, 8) if self.tiny else full)

    def low(self) -> str:
        # bf16 is emulated (slow) on CPUs without AVX512-BF16/AMX: the dry run keeps fp32 on the low-precision rows
        return "fp32" if self.tiny else "bf16"

    def scale(self, full: float, tiny: float) -> float:
        return tiny if self.tiny else full


def cb(*args: str) -> list[str]:
    return [PY, "-m", "cifarbench", *args]


def find_first(*candidates: str) -> Path | None:
    for c in candidates:
        p = (ROOT / c).resolve() if not os.path.isabs(c) else Path(c)
        if p.exists():
            return p
    return None


# ----- the parts ------------------------------------------------------------------------------------------------
def data_inputs(s: Sizes, work: Path) -> tuple[Path | None, Path | None, Path, list[str]]:
    """The JPEG npz to decode, the record's script, where the decoded set goes and the tiny-size limits."""
    npz_src = find_first(os.environ.get("CIFAR10_JPEG", ".gpu/cifar10-jpeg.npz"), ".gpu/cifar10-jpeg.npz",
                         "../shared/data/cifar10-jpeg.npz")
    anchors = find_first(".gpu/anchors/run_airbench.sh", "../shared/anchors/run_airbench.sh")
    decoded = work / "data" / ("cifar10-jpeg-tiny.npz" if s.tiny else "cifar10-jpeg-decoded.npz")
    limits = ["--limit", "512", "--test-limit", "128"] if s.tiny else []
    return npz_src, anchors, decoded, limits


def airbench_part(s: Sizes, anchors: Path | None, npz_src: Path | None) -> Part:
    """The record's own script, 10 runs, in the same call (CUDA only)."""
    air, reason = None, ""
    if not s.cuda:
        reason = "airbench needs CUDA (torch.compile max-autotune on a GPU)"
    elif anchors is None or npz_src is None:
        reason = "anchors/run_airbench.sh or cifar10-jpeg.npz not found (.gpu/ or ../shared/)"
    else:
        air = ["bash", str(anchors), str(npz_src), "10"]
    return Part("airbench", air, 170, 90, stdout="airbench.log", reason=reason)


def call1_parts(s: Sizes, work: Path) -> list[Part]:
    dev, win = s.device, s.window()
    common = ["--synthetic", "--backend", "torch", "--device", dev, *win, "--opt", "sgd", "--lr", "0.01", "--json"]
    npz_src, anchors, decoded, limits = data_inputs(s, work)
    parts = [
        Part("env", [PY, str(HERE / "gpu_kit.py"), "env", "--out", str(work / "env.json")], 40, 5),
        Part("sync", [PY, str(HERE / "gpu_sync_check.py"), "--device", dev], 90, 30, stdout="sync.txt"),
        Part("bench-cnn", cb("bench", *common, "-m", "cnn", "-b", f"{s.batch(64)},{s.batch(512)}",
                             "--precision", "fp32" if s.tiny else "fp32,bf16", "--no-compile", "-o", str(work / "bench-cnn")),
             s.scale(60, 300), s.scale(20, 60)),
        Part("bench-resnet18-eager", cb("bench", *common, "-m", "resnet18", "-b", s.batch(512), "--precision", s.low(),
                                        "--no-compile", "-o", str(work / "bench-resnet18-eager")),
             s.scale(45, 200), s.scale(15, 30)),
    ]
    parts.append(_compiled_r18(s, work, common, "default", 130, 60, True))
    parts.append(Part("data", [PY, str(HERE / "gpu_kit.py"), "decode", str(npz_src), str(decoded), *limits]
                      if npz_src else None, s.scale(60, 120), s.scale(10, 10),
                      reason="cifar10-jpeg.npz not found (.gpu/ or ../shared/data/)"))
    speed = [PY, str(HERE / "gpu_speedrun.py"), "--npz", str(decoded), "--device", dev, "--precision", s.low()]
    if s.tiny:
        speed += ["--runs", "2", "--warmup-runs", "1", "--epochs", "1", "--batch-size", "256", "--eval-batch-size", "64"]
    else:
        speed += ["--runs", "10", "--warmup-runs", "1"]
    parts.append(Part("speedrun", [*speed, "--out", str(work / "speedrun.json")], s.scale(170, 400),
                      s.scale(60, 60), after=("data",)))
    parts.append(airbench_part(s, anchors, npz_src))
    parts.append(_onecycle(s, work, decoded, s.low(), "onecycle", core=True))
    # extras, while time is left: the other compile modes, a compiled speedrun, the fp32 reference run
    parts.append(_compiled_r18(s, work, common, "reduce-overhead", 100, 45, False))
    parts.append(_compiled_r18(s, work, common, "max-autotune", 240, 120, False))
    parts.append(Part("speedrun-compiled", [*speed, "--compile-mode", "default",
                                            "--out", str(work / "speedrun-compiled.json")] if s.cuda else None,
                      180, 60, core=False, after=("data",), reason="compiled speedrun: CUDA only (inductor on a CPU "
                                                                    "takes minutes per graph)"))
    parts.append(_onecycle(s, work, decoded, "fp32", "onecycle-fp32", core=False))
    return parts


def _compiled_r18(s: Sizes, work: Path, common: list[str], mode: str, cap: float, floor: float, core: bool) -> Part:
    name = f"bench-resnet18-{mode}"
    if s.tiny and os.environ.get("TINY_COMPILE") != "1":
        return Part(name, None, cap, floor, core=False,
                    reason="dry run: torch.compile on a small CPU takes minutes per graph (TINY_COMPILE=1 runs it)")
    return Part(name, cb("bench", *common, "-m", "resnet18", "-b", s.batch(1024), "--precision", s.low(),
                         "--compile-mode", mode, "-o", str(work / name)), cap, floor, core=core)


def _onecycle(s: Sizes, work: Path, decoded: Path, precision: str, name: str, core: bool) -> Part:
    args = ["train", "-c", "resnet18-onecycle", "--dataset", f"npz:{decoded}", "--backend", "torch", "--device",
            s.device, "--precision", precision, "-o", str(work / name), "--json"]
    if s.tiny:
        args += ["--epochs", "1"]
    if s.cuda:  # batch 64 is launch-bound: CUDA graphs
        args += ["--compile-mode", "reduce-overhead"]
    if s.tiny and name != "onecycle":
        return Part(name, None, 200, 100, core=False, reason="dry run: one onecycle run is enough at CPU size")
    return Part(name, cb(*args), s.scale(240 if core else 200, 300), s.scale(100, 30), core=core, after=("data",))


def call2_parts(s: Sizes, work: Path) -> list[Part]:
    dev = s.device
    # bench's default windows (5 warm-up steps, 5 windows of 20): the engines here are slower than torch's
    win = s.window() if s.tiny else ["--warmup-steps", "5", "--steps", "20", "--repeats", "5", "--eval-batch-size", "1000"]
    subset_src = find_first(".gpu2/cifar10-jpeg-10k.npz", ".gpu/cifar10-jpeg.npz", "../shared/data/cifar10-jpeg.npz")
    subset = work / "data" / "subset.npz"
    limits = ["--limit", "512", "--test-limit", "128"] if s.tiny else ["--limit", "10000", "--test-limit", "2000"]
    mlx_dev, cupy_dev = ("gpu", "cuda") if s.cuda else ("cpu", "cuda")
    b = s.batch(256)

    def bench(name: str, backend: str, device: str, models: str, *extra: str, cap: float = 90, floor: float = 30,
              core: bool = True) -> Part:
        if s.tiny and "resnet18" in models:
            return Part(name, None, cap, floor, core=False, reason="dry run: resnet18 on MLX/NumPy CPUs takes minutes")
        return Part(name, cb("bench", "--synthetic", "--backend", backend, "--device", device, "-m", models, "-b", b,
                             "--precision", "fp32", *win, "--opt", "sgd", "--lr", "0.01", *extra, "--json",
                             "-o", str(work / name)), s.scale(cap, 300), s.scale(floor, 60), core=core)

    def train(backend: str, device: str, core: bool = True) -> Part:
        epochs = "1" if s.tiny else "2"
        # resnet20: BatchNorm and no dropout (each backend draws its own dropout masks), so one seed is one trajectory
        return Part(f"train-{backend}", cb("train", "resnet20", "--dataset", f"npz:{subset}", "--backend", backend,
                                           "--device", device, "--epochs", epochs, "--batch-size", "64" if s.tiny else "128",
                                           "--opt", "adamw", "--lr", "0.001", "--seed", "0", "--no-compile",
                                           "-o", str(work / f"train-{backend}"), "--json"),
                    s.scale(90, 400), s.scale(25, 60), core=core, after=("data",))

    return [
        Part("env", [PY, str(HERE / "gpu_kit.py"), "env", "--out", str(work / "env.json")], 40, 5),
        Part("mlx-probe", [PY, "-c", "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())"],
             60, 5, stdout="mlx-probe.txt"),
        Part("data", [PY, str(HERE / "gpu_kit.py"), "decode", str(subset_src), str(subset), *limits]
             if subset_src else None, 60, 10, reason="no cifar10-jpeg npz (.gpu2/, .gpu/ or ../shared/data/)"),
        Part("ddp-nccl", [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                          str(HERE / "gpu_ddp_check.py"), "--device", dev, "--out", str(work / "ddp.json")]
             + (["--tiny"] if s.tiny else []), s.scale(90, 300), s.scale(30, 60), stdout="ddp.txt"),
        bench("bench-torch", "torch", dev, "cnn" if s.tiny else "cnn,resnet18", "--no-compile"),
        train("torch", dev),
        bench("bench-cupy-cnn", "cupy", cupy_dev, "cnn"),
        train("cupy", cupy_dev) if s.cuda else Part("train-cupy", None, 90, 25, reason="CuPy needs a CUDA GPU"),
        bench("bench-mlx-cnn", "mlx", mlx_dev, "cnn", "--no-compile", cap=150, floor=60),
        train("mlx", mlx_dev),
        bench("bench-cupy-resnet18", "cupy", cupy_dev, "resnet18", cap=120, floor=45, core=False),
        bench("bench-mlx-resnet18", "mlx", mlx_dev, "resnet18", "--no-compile", cap=150, floor=60, core=False),
        bench("bench-mlx-compiled", "mlx", mlx_dev, "cnn", "--compile", cap=240, floor=120, core=False),
    ]


# ----- the scheduler --------------------------------------------------------------------------------------------
def call3_parts(s: Sizes, work: Path) -> list[Part]:
    """Issue 21: speedrun-muon next to the record (10 runs each, same call) and its optimizer's share of a step."""
    dev = s.device
    npz_src, anchors, decoded, limits = data_inputs(s, work)
    parts = [
        Part("env", [PY, str(HERE / "gpu_kit.py"), "env", "--out", str(work / "env.json")], 40, 5),
        Part("data", [PY, str(HERE / "gpu_kit.py"), "decode", str(npz_src), str(decoded), *limits]
             if npz_src else None, s.scale(60, 120), s.scale(10, 10),
             reason="cifar10-jpeg.npz not found (.gpu/ or ../shared/data/)"),
    ]
    prof = [PY, str(HERE / "gpu_muon_profile.py"), "--npz", str(decoded), "--device", dev, "--precision", s.low()]
    prof += ["--batch-size", "64", "--steps", "2", "--warmup", "1"] if s.tiny else ["--steps", "20", "--warmup", "5"]
    parts.append(Part("muon-profile", [*prof, "--out", str(work / "muon-profile.json")], s.scale(90, 300),
                      s.scale(30, 60), stdout="muon-profile.log", after=("data",)))
    speed = [PY, str(HERE / "gpu_speedrun.py"), "--npz", str(decoded), "--device", dev, "--precision", s.low()]
    if s.tiny:
        speed += ["--runs", "2", "--warmup-runs", "1", "--epochs", "1", "--batch-size", "256", "--eval-batch-size", "64"]
    else:
        speed += ["--runs", "10", "--warmup-runs", "1"]
    parts.append(Part("speedrun-muon", [*speed, "--recipe", "speedrun-muon", "--out", str(work / "speedrun-muon.json")],
                      s.scale(150, 400), s.scale(60, 60), after=("data",)))
    parts.append(airbench_part(s, anchors, npz_src))
    parts.append(Part("muon-profile-compiled", [*prof, "--compile-ns", "--out", str(work / "muon-profile-compiled.json")]
                      if s.cuda else None, 150, 45, core=False, stdout="muon-profile-compiled.log", after=("data",),
                      reason="compiled Newton-Schulz: CUDA only"))
    parts.append(Part("speedrun", [*speed, "--out", str(work / "speedrun.json")], s.scale(170, 400), s.scale(60, 60),
                      core=False, after=("data",)))
    return parts


def timeout_for(part: Part, remaining: float, later: list[Part]) -> float:
    """Seconds this part may run; under its floor means skip.

    Priority goes down the list: a part always gets its floor while that much time is left, and beyond
    its floor it may use only the time not reserved for the floors of the core parts after it.
    """
    reserve = sum(p.floor_s for p in later if p.core and p.cmd is not None)
    return min(part.cap_s, max(remaining - reserve, min(part.floor_s, remaining)))


PACK_MAX_BYTES = 4 << 20  # checkpoints and decoded data stay behind: figures and logs are small


def pack(work: Path, out: Path, call: int) -> None:
    """All raw outputs of the call in one archive (the device returns at most 8 files)."""
    tmp = out / f".raw-call{call}.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            rel = p.relative_to(work)
            if p.is_file() and rel.parts[0] != "data" and p.stat().st_size <= PACK_MAX_BYTES:
                tar.add(p, arcname=f"raw-call{call}/{rel}")
    os.replace(tmp, out / f"raw-call{call}.tar.gz")


def run_part(part: Part, timeout: float, work: Path, log) -> dict:
    out_path = work / (part.stdout or f"{part.name}.out")
    err_path = work / f"{part.name}.log"
    env = {**os.environ, **part.env, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        # own process group (not a new session: the device ends a session's leftovers only if they stay in it)
        proc = subprocess.Popen(part.cmd, stdout=fo, stderr=fe, cwd=ROOT, env=env, process_group=0)
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status = None, "timeout"
    wall = time.monotonic() - t0
    tail = err_path.read_text(errors="replace").strip().splitlines()[-1:] if err_path.stat().st_size else []
    rec = {"part": part.name, "status": status, "rc": rc, "wall_s": round(wall, 2), "timeout_s": round(timeout, 1),
           "cap_s": part.cap_s, "core": part.core, "cmd": part.cmd, "last_stderr": tail[0][-300:] if tail else ""}
    if status == "timeout":
        rec["reason"] = f"stopped at its {timeout:.0f} s budget"
    elif status == "failed":
        rec["reason"] = f"exit code {rc}: {rec['last_stderr']}"
    return rec


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(parts: list[Part], deadline_s: float, work: Path, out: Path, call: int, meta: dict) -> list[dict]:
    t_start = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"log-call{call}.txt"
    records: list[dict] = []
    done_ok: set[str] = set()

    def save() -> None:
        (work / "parts.json").write_text(json.dumps({**meta, "parts": records}, indent=1))
        shutil.copy(work / "parts.json", out / f"parts-call{call}.json")
        pack(work, out, call)

    with open(log_path, "a") as log:
        def say(text: str) -> None:
            line = f"[{time.monotonic() - t_start:6.1f}s] {text}"
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()

        for i, part in enumerate(parts):
            remaining = deadline_s - (time.monotonic() - t_start)
            budget = timeout_for(part, remaining, parts[i + 1:])
            if part.cmd is None:
                rec = {"part": part.name, "status": "skipped", "reason": part.reason, "wall_s": 0.0}
            elif missing := [a for a in part.after if a not in done_ok]:
                rec = {"part": part.name, "status": "skipped", "reason": f"needs {', '.join(missing)} first", "wall_s": 0.0}
            elif budget < part.floor_s:
                rec = {"part": part.name, "status": "skipped", "wall_s": 0.0,
                       "reason": f"time budget: {max(budget, 0):.0f} s left for it, needs {part.floor_s:.0f} s"}
            else:
                say(f"{part.name}: start (budget {budget:.0f} s)")
                rec = run_part(part, budget, work, log)
            if rec["status"] == "ok":
                done_ok.add(part.name)
            say(f"{part.name}: {rec['status']} {rec.get('wall_s', 0):.1f} s {rec.get('reason', '')}".rstrip())
            records.append(rec)
            save()
        say(f"all parts done in {time.monotonic() - t_start:.1f} s")
    return records


# ----- helpers run as parts -------------------------------------------------------------------------------------
def env_part(out: Path) -> int:
    """The machine and the versions: nvidia-smi, python, torch/CUDA/cuDNN, and cifarbench's fingerprint."""
    info: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        q = "name,memory.total,driver_version,clocks.max.sm,clocks.sm,power.limit,temperature.gpu"
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv"], capture_output=True,
                                            text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"unavailable: {exc}"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                           "sms": p.multi_processor_count, "capability": f"{p.major}.{p.minor}"}
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        info["torch_error"] = str(exc)
    versions = {}
    from importlib import metadata

    for name in ("numpy", "triton", "cupy-cuda13x", "cupy-cuda12x", "mlx", "mlx-cuda-13", "jax", "pydantic", "typer",
                 "rich", "pillow", "torchvision"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info["packages"] = versions
    fp = subprocess.run([PY, "-m", "cifarbench", "fingerprint", "--json", "-o", str(out.with_suffix(".fp.json"))],
                        capture_output=True, text=True, cwd=ROOT)
    try:
        info["fingerprint"] = json.loads(fp.stdout)
    except json.JSONDecodeError:
        info["fingerprint_error"] = (fp.stderr.strip().splitlines() or ["no output"])[-1]
    out.write_text(json.dumps(info, indent=1))
    print(json.dumps({k: info.get(k) for k in ("python", "torch", "torch_cuda", "cudnn", "gpu", "nvidia_smi")}, indent=1))
    return 0


def _decode_one(args):
    blob, offsets, lo, hi = args
    import numpy as np
    from PIL import Image

    out = np.empty((hi - lo, 32, 32, 3), np.uint8)
    for i in range(lo, hi):
        out[i - lo] = np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
    return out


def decode_part(src: Path, dst: Path, limit: int | None, test_limit: int | None) -> int:
    """cifar10-jpeg.npz (JPEG bytes + offsets) -> an npz with x_train/y_train/x_test/y_test/class_names."""
    import numpy as np
    from concurrent.futures import ProcessPoolExecutor

    if dst.exists():
        print(f"{dst} exists")
        return 0
    z = np.load(src)
    t0 = time.perf_counter()
    arrays = {}
    workers = max(1, min(16, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers) as pool:
        for split, lim in (("train", limit), ("test", test_limit)):
            blob, off = z[f"{split}_jpeg"], z[f"{split}_offsets"]
            n = len(off) - 1 if not lim else min(lim, len(off) - 1)
            step = -(-n // workers)
            chunks = [(blob, off, lo, min(lo + step, n)) for lo in range(0, n, step)]
            arrays[f"x_{split}"] = np.concatenate(list(pool.map(_decode_one, chunks)))
            arrays[f"y_{split}"] = z[f"y_{split}"][:n].astype(np.int64)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.npz")
    np.savez(tmp, **arrays, class_names=np.array([str(c) for c in z["class_names"]]))
    os.replace(tmp, dst)
    print(f"decoded {len(arrays['y_train'])} train + {len(arrays['y_test'])} test images in "
          f"{time.perf_counter() - t0:.1f} s with {workers} processes -> {dst}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "list"):
        p = sub.add_parser(name)
        p.add_argument("--call", type=int, choices=(1, 2, 3), default=1)
        p.add_argument("--size", choices=("full", "tiny"), default=os.environ.get("SIZE", "full"))
        p.add_argument("--device", default=os.environ.get("DEVICE", "cuda"))
        p.add_argument("--out", default=os.environ.get("OUT") or "")
        p.add_argument("--work", default="", help="raw outputs (default /tmp/gpu-kit-callN, or OUT/work in a dry run)")
        p.add_argument("--deadline", type=float, default=float(os.environ.get("DEADLINE_S", 560)),
                       help="seconds for all parts (keep it under the call's timeout_s)")
        p.add_argument("--parts", default=os.environ.get("PARTS", ""), help="comma list: only these parts, in order")
    p = sub.add_parser("env")
    p.add_argument("--out", required=True)
    p = sub.add_parser("decode")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--limit", type=int)
    p.add_argument("--test-limit", type=int)
    args = ap.parse_args(argv)
    if args.cmd == "env":
        return env_part(Path(args.out))
    if args.cmd == "decode":
        return decode_part(Path(args.src), Path(args.dst), args.limit, args.test_limit)

    sizes = Sizes(args.size == "tiny", args.device)
    out = Path(args.out or f"runs/gpu-kit-{args.size}-{args.device}").resolve()
    work = Path(args.work or (f"/tmp/gpu-kit-call{args.call}" if not sizes.tiny else out / f"work-call{args.call}"))
    parts = {1: call1_parts, 2: call2_parts, 3: call3_parts}[args.call](sizes, work)
    if args.parts:
        wanted = [w.strip() for w in args.parts.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in {p.name for p in parts}]
        if unknown:
            print(f"unknown part(s) {', '.join(unknown)}; valid: {', '.join(p.name for p in parts)}", file=sys.stderr)
            return 2
        parts = [p for p in parts if p.name in wanted]
    if args.cmd == "list":
        for p in parts:
            state = " ".join(p.cmd) if p.cmd else f"(skipped: {p.reason})"
            print(f"{p.name:28s} cap {p.cap_s:5.0f} s floor {p.floor_s:4.0f} s {'core' if p.core else 'extra'}  {state}")
        return 0
    if work.exists():
        shutil.rmtree(work)
    meta = {"call": args.call, "size": args.size, "device": args.device, "deadline_s": args.deadline,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    run(parts, args.deadline, work, out, args.call, meta)
    sys.path.insert(0, str(HERE))
    import gpu_summary

    text = gpu_summary.summarise([out / f"raw-call{c}.tar.gz" for c in (1, 2, 3) if (out / f"raw-call{c}.tar.gz").exists()])
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
