"""The one allow-list unpickler (cifarbench.safepickle) behind CIFAR batches and definfo .pkl checkpoints."""

from __future__ import annotations

import builtins
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from cifarbench import safepickle


class _Call:
    """Pickles as a call of ``fn(*args)``: what a malicious pickle does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class Foreign:  # stands for an original project's own class (pickled by reference to this test module)
    def __init__(self):
        self.w = np.arange(3.0)


@pytest.mark.parametrize("allowed", [safepickle.ARRAYS, safepickle.CHECKPOINT], ids=["arrays", "checkpoint"])
@pytest.mark.parametrize("payload", [
    _Call(os.system, "true"), _Call(builtins.eval, "1"), _Call(builtins.getattr, 1, "real"),
    _Call(np.load, "x.npy"), _Call(__import__, "os"),
], ids=["os.system", "eval", "getattr", "numpy.load", "__import__"])
def test_code_running_names_are_refused_by_both_lists(allowed, payload):
    fallback = safepickle.checkpoint_fallback if allowed is safepickle.CHECKPOINT else None
    data = pickle.dumps({"x": payload}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="not allowed|refusing to load"):
        safepickle.loads(data, allowed, fallback)


def test_arrays_round_trip_and_foreign_classes_become_inert():
    arrays = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [0, 1, 2]}
    out = safepickle.loads(pickle.dumps(arrays, protocol=2), safepickle.ARRAYS, encoding="bytes")
    np.testing.assert_array_equal(out[b"data"], arrays[b"data"])
    assert out[b"labels"] == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):  # the CIFAR list has no placeholders
        safepickle.loads(pickle.dumps({"m": Foreign()}), safepickle.ARRAYS)
    for protocol in (2, 5):  # protocol 2 names builtins '__builtin__' (Python 2's module)
        data = pickle.dumps({"m": Foreign(), "s": {1, 2}}, protocol=protocol)
        obj = safepickle.loads(data, safepickle.CHECKPOINT, safepickle.checkpoint_fallback)
        assert isinstance(obj["m"], safepickle.Placeholder) and obj["s"] == {1, 2}
        np.testing.assert_array_equal(obj["m"].state["w"], np.arange(3.0))


def test_persistent_references_are_refused():
    import io

    class Pers(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage0" if isinstance(obj, str) and obj == "ref" else None

    buf = io.BytesIO()
    Pers(buf, protocol=2).dump({"t": "ref"})
    with pytest.raises(pickle.UnpicklingError, match="persistent"):
        safepickle.loads(buf.getvalue(), safepickle.CHECKPOINT, safepickle.checkpoint_fallback)


def test_there_is_one_restricted_unpickler_in_the_package():
    root = Path(safepickle.__file__).parent
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if re.search(r"class \w+\((pickle\.)?Unpickler\)", p.read_text()))
    assert found == ["safepickle.py"]
