"""`cifarbench bench`: throughput and training-mode benchmarks over backends x devices x models."""

from cifarbench.bench.compare import compare
from cifarbench.bench.matrix import Case, expand
from cifarbench.bench.runner import BenchSettings, apply_baseline, run_bench
from cifarbench.bench.timing import timed

__all__ = ["BenchSettings", "Case", "apply_baseline", "compare", "expand", "run_bench", "timed"]
