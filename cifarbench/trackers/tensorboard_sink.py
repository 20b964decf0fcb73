"""``--logger tensorboard``: event files in ``<run>/tb/`` (``tensorboard --logdir runs``).

Written with TensorBoard's own event writer and protos (no TensorFlow, no torch). The config is
recorded through the HParams plugin. A resumed run writes a new event file in the same folder,
starting with a session-start event at the step after the one it goes on from, so TensorBoard
drops the points a killed run logged past its checkpoint (its purge of orphaned data).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cifarbench.trackers.base import Tracker

FOLDER = "tb"


def _stamp(name: str) -> int:
    """The creation second in an event file's name (``events.out.tfevents.<second>.<host>...``)."""
    try:
        return int(name.split(".")[3])
    except (IndexError, ValueError):
        return 0


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def open(self, run_dir: Path, params: dict[str, Any], run_name: str, start_step: int) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.event_pb2 = event_pb2
        folder = run_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        earlier = [_stamp(f.name) for f in folder.glob("events.out.tfevents.*")]
        # TensorBoard reads a folder's event files in name order, and a name starts with the
        # second it was made in, then the host and the pid: a file made in the same second as
        # an earlier one could sort before it (a smaller pid), and its purge would come first.
        while earlier and int(time.time()) <= max(earlier):
            time.sleep(0.05)
        self.writer = EventFileWriter(str(folder), flush_secs=10)
        if self.resume and earlier:  # TensorBoard purges the older points with step >= this one
            self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=start_step + 1,
                                                  session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        else:  # a new run (or a tracker added at --resume)
            self._hparams(params)

    def _hparams(self, params: dict[str, Any]) -> None:
        from tensorboard.plugins.hparams import summary_v2

        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
        pb = summary_v2.hparams_pb(values)
        self.writer.add_event(self.event_pb2.Event(wall_time=time.time(), step=0, summary=pb))

    def log(self, scalars: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto import summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                                             for k, v in scalars.items()])
        self.writer.add_event(self.event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self.writer.flush()

    def end(self, ok: bool) -> None:
        self.writer.close()  # flushes
