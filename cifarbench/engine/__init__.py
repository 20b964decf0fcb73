"""The training loop every backend shares: epochs, schedules, metrics, timing."""

from cifarbench.engine.reporter import RecordingReporter, Reporter

__all__ = ["RecordingReporter", "Reporter"]
