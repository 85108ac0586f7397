"""Live evaluation: run a YOLOS over a dataset and score its own detections with COCO mAP."""

from __future__ import annotations

from probe_kit import distributed
from probe_kit.data.spec import DataSpec
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.models.loading import ModelSpec, load_yolos, person_label_index
from probe_kit.models.predict import sample_detections
from probe_kit.models.runner import run_batches


def evaluate_model(
    model_spec: ModelSpec,
    data_spec: DataSpec,
    batch_size: int = 8,
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7),
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """``(metrics, detections)`` of the model's final-layer outputs on the dataset (on every torchrun rank)."""
    from probe_kit.console import progress_bar

    samples = data_spec.load()
    model, processor = load_yolos(model_spec)
    person = person_label_index(model.config)
    # Under torchrun each rank runs its contiguous, batch-aligned share of the images (the same batches as
    # one process); rank 0 gathers the detections in image order and scores them once.
    lo, hi = distributed.shard_bounds(len(samples), distributed.rank(), distributed.world_size(), batch_size)
    detections: list[dict] = []
    with progress_bar(total=hi - lo, desc="evaluate", unit="img", show=progress and distributed.is_main()) as bar:
        for batch in run_batches(model, processor, samples[lo:hi], batch_size):
            detections += sample_detections(batch.outputs.logits, batch.outputs.pred_boxes, batch.samples, person)
            bar.update(len(batch.samples))
    detections = [d for part in distributed.all_gather_object(detections) for d in part]
    metrics = distributed.on_rank_zero(lambda: evaluate(ground_truth_dict(samples), detections, thresholds))
    return metrics, detections
