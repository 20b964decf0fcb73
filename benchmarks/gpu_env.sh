# Sourced by gpu_h200.sh and gpu_h200_call2.sh: the wheels the GPU machine lacks, and the checkout on the path.
PY=${PYTHON:-python3}
if ! "$PY" -c "import pydantic, platformdirs" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then  # the device image has no pydantic/platformdirs (gpu_prepare.sh fills .whl/)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || { echo "could not install .whl/*.whl" >&2; exit 1; }
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "pydantic/platformdirs missing and no .whl/ folder: run benchmarks/gpu_prepare.sh first" >&2; exit 1
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# preflight: the CLI must start here, or no part can give a figure
"$PY" -m cifarbench --version || { echo "cifarbench does not start with this python ($PY): see the error above" >&2; exit 1; }
