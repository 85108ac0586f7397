"""Dress rehearsal of the real study: experiments/mot17_yolos_small.yaml end to end on yolos-small's architecture.

A checkpoint folder with hustvl/yolos-small's exact architecture (random weights, seeded tokens) and its
processor (800 px shortest edge) runs the shipped YAML (512 px) on the real MOT17 excerpt. Only what keeps
CI short is changed in a temporary copy: the local model folder, ``device: cpu``, fewer frames (three
sequences, every fourth frame: 4 images) and epochs, three timing rounds of one image. Every stage must
see the cache's input size. Measured on 2 quiet cores: 136 s wall, 178 CPU-s, 4.4 GB peak.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import real_data

REPO = Path(__file__).resolve().parents[1]

# COCO's 91 category ids as in yolos-small's id2label ("N/A" for ids COCO does not use); 1 = person.
COCO_LABELS = [
    "N/A",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic_light",
    "fire_hydrant",
    "N/A",
    "stop_sign",
    "parking_meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports_ball",
    "kite",
    "baseball_bat",
    "baseball_glove",
    "skateboard",
    "surfboard",
    "tennis_racket",
    "bottle",
    "N/A",
    "wine_glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot_dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted_plant",
    "bed",
    "N/A",
    "dining_table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell_phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy_bear",
    "hair_drier",
    "toothbrush",
]


def make_yolos_small(folder: Path, seed: int = 0) -> Path:
    """hustvl/yolos-small's architecture and processor config, random weights with seeded tokens."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    from probe_kit.models.loading import seed_token_embeddings

    labels = {i: name.replace("_", " ") for i, name in enumerate(COCO_LABELS)}
    assert len(labels) == 91 and labels[1] == "person"
    torch.manual_seed(seed)
    config = YolosConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        num_detection_tokens=100,
        use_mid_position_embeddings=True,
        image_size=[512, 864],
        id2label=labels,
        label2id={v: k for k, v in labels.items() if v != "N/A"},
    )
    model = YolosForObjectDetection(config)
    seed_token_embeddings(model, seed)
    model.save_pretrained(folder)
    YolosImageProcessorPil(size={"shortest_edge": 800, "longest_edge": 1333}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """Run the study once; returns its folder and the shipped YAML as parsed."""
    from click.testing import CliRunner

    from probe_kit.cli.main import cli

    root = real_data("MOT17")
    tmp = tmp_path_factory.mktemp("rehearsal")
    shipped = yaml.safe_load((REPO / "experiments" / "mot17_yolos_small.yaml").read_text())
    study = dict(shipped)
    study.update(
        model=str(make_yolos_small(tmp / "yolos-small")),
        device="cpu",
        sequences=["02", "09", "13"],  # train 02, early-stop 09, validate 13
        val_sequences=["13"],
        stride=4,  # the excerpt holds frames 1-4 of 02 and 09, 1-5 of 13: 1 + 1 + 2 images
        batch_size=2,
    )
    study["analyzers"] = {
        name: {**options, **({"epochs": 2} if "epochs" in options else {})}
        for name, options in shipped["analyzers"].items()
    }
    study["exits"] = {**shipped["exits"], "epochs": 2, "timing_images": 1, "timing_repeats": 3, "timing_warmup": 0}
    # the shipped comparison's head types at the study's size; frozen only (no live training) and few timed
    # settings (CPU)
    study["exits"]["designs"] = {
        **shipped["exits"]["designs"],
        "finetune_blocks": [0],
        "joint": [],
        "epochs": 1,
        "policies": ["learned", "oracle"],
        "timing_images": 1,
        "timing_repeats": 3,
        "det_tokens": [10],  # one of the shipped grid's
        "baseline_resolutions": [0.5],
        "baseline_models": [],  # hustvl/yolos-tiny needs the hub
    }
    path = tmp / "mot17_yolos_small.yaml"
    path.write_text(yaml.safe_dump(study))
    result = CliRunner(env={"MOT17_ROOT": str(root)}).invoke(cli, ["run", str(path), "--out", str(tmp / "run")])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return tmp / "run", shipped


def test_the_shipped_study_caches_patch_tokens_at_its_exits(rehearsal):
    from probe_kit.cache.reader import FeatureCache

    run, shipped = rehearsal
    with FeatureCache(run / "cache.h5") as cache:
        assert cache.layers == (3, 6, 9, 12) and set(cache.tokens) == {"det", "patch"}
        assert cache.read(6, "patch").shape[1:] == (cache.layout.num_patches, 384)
    assert set(shipped["analyzers"]) >= {"probe-dense", "lens", "flops"}


def test_every_stage_sees_the_cache_input_size(rehearsal):
    """512 px as the YAML says (not the checkpoint's 800 px): in the cache, the FLOPs count, the rebuilt exits
    model, and the evaluated full model's detections, which equal the cache's own final outputs."""
    from transformers import YolosImageProcessorPil

    from probe_kit.cache.reader import FeatureCache
    from probe_kit.heads.store import load_exits
    from probe_kit.models.predict import detections_from_outputs

    run, _ = rehearsal
    with FeatureCache(run / "cache.h5") as cache:
        samples = cache.data_spec().load()
        sizes = {tuple(int(v) for v in s) for s in cache.input_sizes()}
        logits, boxes = cache.final_outputs()
        ids = [int(i) for i in cache.image_ids()]
    image = samples[0].load_image()
    reference = YolosImageProcessorPil(size={"shortest_edge": 512, "longest_edge": 853})  # transformers' own resize
    height, width = reference(images=[image], return_tensors="pt")["pixel_values"].shape[-2:]
    assert sizes == {(width, height)} == {(848, 480)}  # 1920x1080 frames; at 800 px they would be 1328x736

    flops = json.loads((run / "results" / "flops" / "result.json").read_text())
    assert tuple(flops["profile"]["input_size"]) == (848, 480)

    _, processor, _, config = load_exits(run / "exits")
    assert tuple(processor(images=[image], return_tensors="pt")["pixel_values"].shape[-2:]) == (480, 848)
    assert config.base_model["processor"]["size"]["shortest_edge"] == 512

    full = json.loads((run / "exits_eval" / "detections" / "full.json").read_text())
    scored = sorted({d["image_id"] for d in full})
    assert scored and set(scored) <= {s.image_id for s in samples if s.file_name.startswith("MOT17-13")}
    rows = [ids.index(i) for i in scored]
    sizes_of = {s.image_id: (s.width, s.height) for s in samples}
    expected = detections_from_outputs(
        torch.from_numpy(logits[rows]), torch.from_numpy(boxes[rows]), scored, [sizes_of[i] for i in scored], 1
    )
    assert len(full) == len(expected) == 100 * len(scored)  # every det token, no score cut
    for image_id in scored:
        ours, theirs = (
            sorted((d for d in found if d["image_id"] == image_id), key=lambda d: -d["score"])
            for found in (full, expected)
        )
        np.testing.assert_allclose([d["score"] for d in ours], [d["score"] for d in theirs], atol=1e-4)
        np.testing.assert_allclose([d["bbox"] for d in ours], [d["bbox"] for d in theirs], atol=0.5)


def test_exit_heads_are_scored_on_images_that_trained_nothing(rehearsal):
    run, _ = rehearsal
    config = json.loads((run / "exits" / "config.json").read_text())
    result = json.loads((run / "exits_eval" / "result.json").read_text())
    used = set(config["train_image_ids"]) | set(config["holdout_image_ids"])
    assert used and not used & set(result["scored_image_ids"])
    assert (run / "report.html").is_file()


def test_the_shipped_design_comparison_runs_at_the_study_size_on_images_that_trained_nothing(rehearsal):
    run, shipped = rehearsal
    assert set(shipped["exits"]["designs"]["heads"]) == {"det", "dense"}
    assert shipped["exits"]["designs"]["finetune_blocks"] == [0, 2]
    assert shipped["exits"]["designs"]["joint"] == ["det", "dense"]  # trained live: on a GPU, not in this test
    result = json.loads((run / "designs" / "result.json").read_text())
    assert {d["head"] for d in result["designs"]} == {"det", "dense"}
    scored = set(result["scored_image_ids"])
    for folder in result["folders"]:
        config = json.loads((Path(folder["exits_dir"]) / "config.json").read_text())
        assert config["base_model"]["processor"]["size"]["shortest_edge"] == 512
        used = set(folder["heads_trained_on_image_ids"]) | set(folder["heads_early_stopped_on_image_ids"])
        assert used and not used & scored and not set(folder["policies_fitted_on_image_ids"]) & scored
    assert "latency" in result["full_model"]
    assert shipped["exits"]["designs"]["baseline_models"] == ["hustvl/yolos-tiny"]  # the team's smaller model
    (half,) = result["baselines"]  # at the study's own settings: half of its 512-px resize
    # 1920x1080 frames at shortest edge 512 meet yolos' longest-edge cap (512 x 1333 / 800 = 853): 480 px high;
    # at half the edges, 240
    assert half["shortest_edge"] == 256 and half["input_size"][1] == 240
    tokens = [f for f in result["folders"] if f["det_token_indices"]]
    assert [len(f["det_token_indices"]) for f in tokens] == [10]
    recommendation = json.loads((run / "designs" / "recommendation.json").read_text())
    assert recommendation["verdict"] and recommendation["rationale"]
