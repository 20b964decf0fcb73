"""Complete EpochRecord / RunInfo / RunSummary values for tests of their readers (override any field)."""

from __future__ import annotations

from cifarbench.engine.records import EpochRecord, RunInfo, RunSummary


def record(**kw) -> EpochRecord:
    base = dict(epoch=1, train_loss=1.0, train_acc=0.5, eval_split="test", eval_loss=1.0, eval_acc=0.5, lr=0.1,
                momentum=0.9, images_per_s=100.0, train_time_s=0.8, eval_time_s=0.2, epoch_time_s=1.0, elapsed_s=1.0)
    return EpochRecord(**{**base, **kw})


def _info_fields(**kw) -> dict:
    base = dict(model="cnn", params=10, dataset="synthetic", train_images=10, eval_split="test", eval_images=10,
                test_images=10, backend="numpy", device="cpu", device_name="numpy cpu", precision="fp32", epochs=1,
                batch_size=1, steps_per_epoch=10, total_steps=10, start_epoch=0, run_dir="runs/x", writes=True,
                recipe=None)
    return {**base, **kw}


def info(**kw) -> RunInfo:
    return RunInfo(**_info_fields(**kw))


def summary(**kw) -> RunSummary:
    base = dict(total_time_s=1.0, train_time_s=0.8, time_per_epoch_s=1.0, images_per_s=100.0, warmup_s=0.0,
                final_train_loss=1.0, final_train_acc=0.5, final_val_acc=None, test_accuracy=0.5, test_loss=1.0,
                test={}, checkpoint=None, class_names=(), seed=0, forward_macs=None, train_flops_per_image=None,
                train_pflops=None)
    fields = {**base, **kw}
    own = {k: fields.pop(k) for k in list(fields) if k in base}
    return RunSummary(**_info_fields(**fields), **own)
