"""run_log.json: what ran, where, with which software.

Everything here is best effort and guarded: a probe that fails yields ``None``, never an
exception, and subprocesses (nvidia-smi, sysctl, git) get short timeouts. Versions come from
package metadata so that fingerprinting does not import torch, mlx or cupy; GPU details are
read from a framework only when it is already imported (``sys.modules``), or from the vendor
tools. ``fingerprint_id`` hashes the fields that describe the machine and software (not the
time, host name, git commit or paths), so two results with the same id ran on comparable set-ups.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime
from importlib import metadata, util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from cifarbench.engine.records import RunSummary

PACKAGES = ("numpy", "torch", "torchvision", "mlx", "mlx-data", "cupy", "cupy-cuda12x", "cupy-cuda11x", "jax", "jaxlib",
            "safetensors", "pydantic", "typer", "rich", "matplotlib")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS")
FRAMEWORK_NAMES = {"torch": "PyTorch", "mlx": "MLX", "numpy": "NumPy", "cupy": "CuPy", "jax": "JAX"}
PREFERENCE = ("torch", "mlx", "cupy", "jax", "numpy")  # the default backend first (standalone run_log's "framework")
TIMEOUT_S = 5.0


def _safe(fn: Callable[[], Any], default: Any = None) -> Any:
    try:
        return fn()
    except Exception:  # a probe must never break a run
        return default


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# ----- hardware ------------------------------------------------------------------------
def _cpu_model() -> str | None:
    if sys.platform == "darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"])
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _physical_cores() -> int | None:
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "hw.physicalcpu"])
        return int(out) if out and out.isdigit() else None
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    cores, phys = set(), None
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "physical id":
            phys = val.strip()
        elif key.strip() == "core id":
            cores.add((phys, val.strip()))
    return len(cores) or None


def _memory_bytes() -> int | None:
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "hw.memsize"])
        return int(out) if out and out.isdigit() else None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        m = re.search(r"MemTotal:\s+(\d+) kB", meminfo.read_text())
        if m:
            return int(m.group(1)) * 1024
    return _safe(lambda: os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _nvidia_gpus() -> list[dict[str, Any]]:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap,driver_version", "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            gpus.append({"name": parts[0], "memory_gib": _safe(lambda: round(float(parts[1]) / 1024, 1)),
                         "compute_capability": parts[2], "driver": parts[3], "source": "nvidia-smi"})
    return gpus


def _torch_gpus() -> list[dict[str, Any]]:
    torch = sys.modules.get("torch")
    if torch is None or not _safe(torch.cuda.is_available, False):
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                     "compute_capability": f"{p.major}.{p.minor}", "source": "torch"})
    return gpus


def _apple_gpus() -> list[dict[str, Any]]:
    if sys.platform != "darwin":
        return []
    gpu: dict[str, Any] = {"name": None, "source": "system_profiler"}
    raw = _run(["system_profiler", "SPDisplaysDataType", "-json"])
    items = _safe(lambda: json.loads(raw).get("SPDisplaysDataType", []), []) if raw else []
    if items:
        gpu["name"] = items[0].get("sppci_model")
        gpu["cores"] = items[0].get("sppci_cores")
        gpu["metal"] = items[0].get("spdisplays_mtlgpufamilysupport")
    mx = sys.modules.get("mlx.core")
    info = _safe(lambda: mx.metal.device_info(), None) if mx is not None else None
    if info:
        gpu["metal_architecture"] = info.get("architecture")
        gpu["memory_gib"] = _safe(lambda: round(info["memory_size"] / 2**30, 1))
        gpu["name"] = gpu["name"] or info.get("device_name")
    return [gpu] if gpu.get("name") or gpu.get("metal_architecture") else []


def gpus() -> list[dict[str, Any]]:
    return _safe(_torch_gpus, []) or _safe(_nvidia_gpus, []) or _safe(_apple_gpus, [])


def hardware() -> dict[str, Any]:
    mem = _safe(_memory_bytes)
    return {
        "os": platform.system(), "os_release": platform.release(), "os_version": platform.version(),
        "architecture": platform.machine(), "processor": platform.processor() or None,
        "cpu_model": _safe(_cpu_model), "physical_cores": _safe(_physical_cores), "logical_cores": os.cpu_count(),
        "usable_cores": _safe(lambda: len(os.sched_getaffinity(0)), os.cpu_count()),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "chip": _safe(_cpu_model) if sys.platform == "darwin" else None,
        "gpus": gpus(),
    }


# ----- software ------------------------------------------------------------------------
def package_versions() -> dict[str, str | None]:
    """Installed versions from metadata: nothing is imported."""
    return {name: _safe(lambda n=name: metadata.version(n)) for name in PACKAGES}


def _torch_build() -> dict[str, Any]:
    """CUDA/cuDNN of the installed torch: torch/version.py is read as text unless torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is not None:
        cudnn = _safe(lambda: torch.backends.cudnn.version()) if _safe(torch.cuda.is_available, False) else None
        return {"cuda": torch.version.cuda, "cudnn": cudnn, "hip": getattr(torch.version, "hip", None)}
    spec = _safe(lambda: util.find_spec("torch"))
    if spec is None or not spec.submodule_search_locations:
        return {}
    text = _safe(lambda: (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text(), "")
    found = dict(re.findall(r"^(cuda|hip)\s*:?[^=]*=\s*['\"]([^'\"]+)['\"]", text or "", re.M))
    return {"cuda": found.get("cuda"), "hip": found.get("hip"), "cudnn": None}


def _numpy_blas() -> dict[str, Any] | None:
    import numpy as np

    cfg = _safe(lambda: np.show_config(mode="dicts"))
    blas = (cfg or {}).get("Build Dependencies", {}).get("blas")
    if not blas:
        return None
    return {k: blas.get(k) for k in ("name", "version", "openblas configuration") if blas.get(k)}


def threads() -> dict[str, Any]:
    out: dict[str, Any] = {var: os.environ.get(var) for var in THREAD_VARS}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_threads"] = _safe(torch.get_num_threads)
        out["torch_interop_threads"] = _safe(torch.get_num_interop_threads)
    return out


def git_info() -> dict[str, Any] | None:
    """Commit of the checkout cifarbench runs from (None when installed from a wheel)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    commit = _run(["git", "rev-parse", "HEAD"], cwd=str(root))
    if commit is None:
        return None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=str(root))
    return {"commit": commit, "dirty": bool(status)}


def software() -> dict[str, Any]:
    from cifarbench import __version__

    return {
        "python": platform.python_version(), "python_implementation": platform.python_implementation(),
        "packages": package_versions(), "numpy_blas": _safe(_numpy_blas), "torch_build": _safe(_torch_build, {}),
        "cifarbench": __version__, "git": _safe(git_info),
    }


def availability() -> list[dict[str, Any]]:
    from cifarbench.backends import availability_matrix

    return [{"backend": a.backend, "device": a.device, "available": a.available, "reason": a.reason}
            for a in _safe(availability_matrix, [])]


# ----- the fingerprint ----------------------------------------------------------------
STABLE_KEYS = {
    "hardware": ("os", "os_release", "architecture", "cpu_model", "physical_cores", "logical_cores", "memory_gib",
                 "chip", "gpus"),
    "software": ("python", "packages", "numpy_blas", "torch_build", "cifarbench"),
}


def memory_gib(entry: dict[str, Any] | None) -> Any:
    """A hardware or GPU entry's memory in GiB: ``memory_gib``, or ``memory_gb`` as older run logs
    named it (the value was GiB then too); None when neither is there."""
    entry = entry or {}
    return entry.get("memory_gib", entry.get("memory_gb"))


def _id_memory(entry: dict[str, Any]) -> dict[str, Any]:
    """The id hashes memory under its first name, so renaming the key changed no machine's id."""
    out = {k: v for k, v in entry.items() if k not in ("memory_gib", "memory_gb")}
    if "memory_gib" in entry or "memory_gb" in entry:
        out["memory_gb"] = memory_gib(entry)
    return out


def fingerprint_id(fp: dict[str, Any]) -> str:
    """sha256 over the stable fields (machine, versions, threads, availability), 16 hex digits."""
    stable: dict[str, Any] = {}
    for section, keys in STABLE_KEYS.items():
        stable[section] = {k: fp.get(section, {}).get(k) for k in keys}
    hw = stable["hardware"]
    hw.pop("memory_gib")
    hw["memory_gb"] = memory_gib(fp.get("hardware"))
    if isinstance(hw.get("gpus"), list):
        hw["gpus"] = [_id_memory(g) if isinstance(g, dict) else g for g in hw["gpus"]]
    # cuDNN and torch's thread counts are only known once torch is loaded: left out so the id
    # does not depend on what happened to be imported before fingerprinting.
    stable["software"]["torch_build"] = {k: (stable["software"]["torch_build"] or {}).get(k) for k in ("cuda", "hip")}
    stable["threads"] = {k: (fp.get("threads") or {}).get(k) for k in THREAD_VARS}
    stable["availability"] = [(a["backend"], a["device"], a["available"]) for a in fp.get("availability", [])]
    blob = json.dumps(stable, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def collect(with_availability: bool = True) -> dict[str, Any]:
    """The full fingerprint. Availability imports each backend's framework (that is what it tests),
    so it is taken first: GPU details read afterwards can then use the loaded frameworks."""
    avail = availability() if with_availability else []
    fp: dict[str, Any] = {
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "hardware": hardware(), "software": software(), "threads": threads(), "availability": avail,
    }
    fp["fingerprint_id"] = fingerprint_id(fp)
    return fp


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted names of the stable fields that differ between two fingerprints."""
    def value(fp: dict[str, Any], section: str, k: str) -> Any:
        entry = fp.get(section) or {}
        if section == "hardware" and k == "memory_gib":  # an older log's memory_gb is the same figure
            return memory_gib(entry)
        if section == "hardware" and k == "gpus" and isinstance(entry.get("gpus"), list):
            return [_id_memory(g) if isinstance(g, dict) else g for g in entry["gpus"]]
        return entry.get(k)

    out = []
    for section, keys in STABLE_KEYS.items():
        for k in keys:
            if value(a, section, k) != value(b, section, k):
                out.append(f"{section}.{k}")
    for k in THREAD_VARS:
        if (a.get("threads") or {}).get(k) != (b.get("threads") or {}).get(k):
            out.append(f"threads.{k}")
    if fingerprint_id(a) != fingerprint_id(b) and not out:
        out.append("availability")
    return out


# ----- a training run's log ------------------------------------------------------------
def _optimizer_text(cfg) -> str:
    if cfg.opt == "sgd":
        extra = ", nesterov=True" if cfg.nesterov else ""
        return f"SGD(lr={cfg.lr}, momentum={cfg.momentum}, weight_decay={cfg.weight_decay}{extra})"
    name = "AdamW" if cfg.opt == "adamw" else "Adam"
    return f"{name}(lr={cfg.lr}, betas={tuple(cfg.betas)}, weight_decay={cfg.weight_decay})"


def _scheduler_text(cfg) -> str:
    """The schedule object's own description (one place per schedule, so a new one cannot be missed)."""
    from cifarbench.engine.schedules import make_schedule

    return make_schedule(cfg, 1).describe()


def _history(run_dir: str | None) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _command_line() -> list[str]:
    """The command as typed (argv, program name first): how to run it again."""
    import sys

    return [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "cifarbench", *sys.argv[1:]]


def _package_version(fp: dict[str, Any], backend_name: str) -> str | None:
    pkgs = fp["software"]["packages"]
    pkg = "cupy" if backend_name == "cupy" else backend_name
    return pkgs.get(pkg) or next((v for k, v in pkgs.items() if k.startswith(pkg) and v), None)


def original_hardware(fp: dict[str, Any], versions: dict[str, str | None], device: str | None,
                      device_name: str | None) -> dict[str, Any]:
    """The seed projects' ``hardware`` block (``OS``, ``OS_Version``, ``Architecture``, ``Processor``,
    ``<Framework>_Version``, ``Device``, ``Chip``) from a fingerprint, with the device as it really was."""
    hw = fp["hardware"]
    gpu_name = hw["gpus"][0]["name"] if hw["gpus"] and device not in (None, "cpu") else None
    out: dict[str, Any] = {"OS": hw["os"], "OS_Version": hw["os_version"], "Architecture": hw["architecture"],
                           "Processor": hw["processor"]}
    out.update({f"{name}_Version": v for name, v in versions.items()})
    out.update({"Device": device.upper() if device else None, "Device_Name": device_name,
                "Chip": hw["chip"] or gpu_name or hw["cpu_model"]})
    return out


def standalone_run_log(fp: dict[str, Any]) -> dict[str, Any]:
    """``cifarbench fingerprint``'s run_log.json: the same top-level schema as a run directory's
    (the seeds' ``framework``/``hardware``/``timestamp`` keys, then ``fingerprint_id``/``fingerprint``),
    without the training sections. ``framework``/``Device`` name the first available accelerator in
    ``PREFERENCE`` order (else that order's first CPU backend); every installed framework's version
    is listed (``PyTorch_Version``, ``MLX_Version``, ...)."""
    rank = {b: i for i, b in enumerate(PREFERENCE)}
    usable = sorted((a for a in fp.get("availability") or [] if a["available"]),
                    key=lambda a: (a["device"] == "cpu", rank.get(a["backend"], len(rank))))
    best = usable[0] if usable else None
    versions = {FRAMEWORK_NAMES.get(b, b): _package_version(fp, b) for b in PREFERENCE}
    versions = {k: v for k, v in versions.items() if v}
    return {
        "command": "fingerprint",
        "framework": FRAMEWORK_NAMES.get(best["backend"], best["backend"]) if best else None,
        "hardware": original_hardware(fp, versions, best["device"] if best else None, None),
        "timestamp": datetime.now().strftime("%Y%m%d_%H%M%S"),
        "fingerprint_id": fp["fingerprint_id"],
        "fingerprint": fp,
    }


def training_run_log(cfg, summary: RunSummary, backend) -> dict[str, Any]:
    """mike7seven's run_log.json fields (device reported as it really was) + fingerprint, config, history."""
    fp = collect()
    framework = FRAMEWORK_NAMES.get(backend.name, backend.name)
    test = summary.test
    return {
        "framework": framework,
        "hardware": original_hardware(fp, {framework: _package_version(fp, backend.name)}, str(backend.device),
                                      _safe(backend.describe)),
        "training": {
            "dataset": cfg.dataset, "num_classes": len(summary.class_names) or None,
            "seed": cfg.seed, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "optimizer": _optimizer_text(cfg), "scheduler": _scheduler_text(cfg),
            "training_time_seconds": summary.total_time_s, "model": cfg.model,
            "model_params": summary.params, "precision": cfg.precision,
        },
        "results": {
            # accuracies are fractions in every file (percent is for people: tables, plots, messages)
            "overall_accuracy": summary.test_accuracy,
            "per_class_accuracy": dict(test.get("per_class_accuracy") or {}),
            "test_loss": summary.test_loss, "final_train_loss": summary.final_train_loss,
            "final_val_acc": summary.final_val_acc, "time_per_epoch_s": summary.time_per_epoch_s,
            "images_per_s": summary.images_per_s, "forward_macs": summary.forward_macs,
            "train_flops_per_image": summary.train_flops_per_image, "train_pflops": summary.train_pflops,
            "confusion_matrix": test.get("confusion_matrix"),
        },
        "checkpoint": summary.checkpoint,
        "timestamp": datetime.now().astimezone().isoformat(timespec="seconds"),  # ISO 8601 with the UTC offset
        "command_line": _command_line(),
        "run_dir": summary.run_dir,
        "fingerprint_id": fp["fingerprint_id"],
        "fingerprint": fp,
        "config": cfg.model_dump(mode="json"),
        "history": _history(summary.run_dir),
    }
