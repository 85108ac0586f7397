"""Live evaluation: run a YOLOS over a dataset and score its own detections with COCO mAP."""

from __future__ import annotations

from probe_kit.data.spec import DataSpec
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.models.loading import ModelSpec, load_yolos, person_label_index
from probe_kit.models.predict import detections_from_outputs
from probe_kit.models.runner import run_batches


def evaluate_model(
    model_spec: ModelSpec,
    data_spec: DataSpec,
    batch_size: int = 8,
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7),
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """``(metrics, detections)`` of the model's final-layer outputs on the dataset."""
    from tqdm import tqdm

    samples = data_spec.load()
    model, processor = load_yolos(model_spec)
    person = person_label_index(model.config)
    detections: list[dict] = []
    with tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress) as bar:
        for batch in run_batches(model, processor, samples, batch_size):
            detections += detections_from_outputs(
                batch.outputs.logits,
                batch.outputs.pred_boxes,
                [s.image_id for s in batch.samples],
                [(s.width, s.height) for s in batch.samples],
                person,
            )
            bar.update(len(batch.samples))
    return evaluate(ground_truth_dict(samples), detections, thresholds), detections
