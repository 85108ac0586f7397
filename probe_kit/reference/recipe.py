"""Training recipe of the reference model: a small YOLOS trained from scratch on synthetic scenes.

Supervision is at the final layer only, as YOLOS is trained: the DETR set loss on the final
detection tokens, plus (a training aid, dropped after training) a dense per-patch objectness +
box loss on the *final* layer's patch tokens. Intermediate layers get no loss of their own, so
whatever they hold is for the toolkit to discover, not manufactured by the recipe.

Resumable: ``last.pt`` holds model, optimiser and step; the batch order of step ``s`` is a
function of ``(seed, s)`` alone, so an interrupted run resumed gives the same numbers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from probe_kit import distributed
from probe_kit.data.synth import SceneSpec, render_scene, scene_to_sample
from probe_kit.io import read_yaml
from probe_kit.metrics.coco import evaluate, ground_truth_dict
from probe_kit.models.loading import seed_token_embeddings
from probe_kit.models.predict import sample_detections
from probe_kit.ops.boxes import xywh_to_cxcywh_norm
from probe_kit.ops.dense import DENSE_WEIGHTS, DenseHead, dense_loss, dense_normalisers, dense_targets
from probe_kit.ops.set_loss import SetCriterion


@dataclass(frozen=True)
class RecipeConfig:
    """Everything that determines the reference model. The defaults are the shipped recipe,
    ``experiments/reference_model.yaml`` (a test keeps the two equal)."""

    seed: int = 0
    scene_size: int = 256
    image_size: int = 128
    hidden_size: int = 192
    num_layers: int = 12
    num_heads: int = 3
    intermediate_size: int = 768
    det_tokens: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 300
    steps: int = 6000
    grad_clip: float = 0.1
    dense_weight: float = 1.0
    train_seed: int = 1000
    train_frames: int = 16000
    easy_seed: int = 1001
    easy_frames: int = 4000
    easy_mix: tuple[float, float, float] = (0.7, 0.3, 0.0)  # easy, medium, hard
    curriculum_start: int = 800  # step where the default mix starts to replace the easy pool
    curriculum_end: int = 2500  # step from which only the default mix is used
    heldout_seed: int = 7  # checkpoint selection (never trained on); export scores a fresh seed too
    heldout_frames: int = 300
    eval_every: int = 250

    @classmethod
    def from_yaml(cls, path: Path) -> RecipeConfig:
        raw = read_yaml(Path(path), "recipe YAML") or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown key {unknown[0]!r}; expected one of {sorted(known)}")
        if "easy_mix" in raw:
            raw["easy_mix"] = tuple(raw["easy_mix"])
        return cls(**raw)


def build_model(cfg: RecipeConfig):
    """A fresh one-class YOLOS with seeded token embeddings, plus its image processor."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    config = YolosConfig(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        image_size=[cfg.image_size, cfg.image_size],
        num_detection_tokens=cfg.det_tokens,
        use_mid_position_embeddings=True,  # as yolos-small, the model the original study used
        id2label={0: "person"},
        label2id={"person": 0},
    )
    torch.manual_seed(cfg.seed)
    model = YolosForObjectDetection(config)
    seed_token_embeddings(model, cfg.seed)
    processor = YolosImageProcessorPil(size={"shortest_edge": cfg.image_size, "longest_edge": cfg.image_size})
    return model, processor


@dataclass
class _Pool:
    """Rendered scenes in memory: processor-normalised pixels and per-image targets."""

    pixels: torch.Tensor  # [N, 3, S, S] float16
    boxes: list[np.ndarray]  # normalised cx, cy, w, h per image
    samples: list  # Sample per image, for COCO ground truth


def _render_pool(seed: int, frames: int, spec: SceneSpec, processor, desc: str) -> _Pool:
    from probe_kit.console import progress_bar

    pixels, boxes, samples = [], [], []
    chunk = []
    for index in progress_bar(range(frames), desc=desc, unit="img", leave=False):
        scene = render_scene(seed, index, spec)
        sample = scene_to_sample(scene, image_id=index + 1, file_name=f"{desc}/{index:06d}")
        samples.append(sample)
        boxes.append(xywh_to_cxcywh_norm(sample.boxes, spec.width, spec.height).astype(np.float32))
        chunk.append(scene.image)
        if len(chunk) == 256 or index == frames - 1:
            out = processor(images=chunk, return_tensors="pt")
            pixels.append(out["pixel_values"].to(torch.float16))
            chunk = []
    return _Pool(torch.cat(pixels), boxes, samples)


def _lr_at(step: int, cfg: RecipeConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _batch(step: int, cfg: RecipeConfig, main: _Pool, easy: _Pool, grid: tuple[int, int]):
    """Batch of step ``step``: a pure function of (seed, step), so resuming reproduces it."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, step]))
    ramp = (step - cfg.curriculum_start) / max(1, cfg.curriculum_end - cfg.curriculum_start)
    p_main = float(np.clip(ramp, 0.0, 1.0))
    from_main = rng.random(cfg.batch_size) < p_main
    pixels, targets, boxes_list = [], [], []
    for use_main in from_main:
        pool = main if use_main else easy
        i = int(rng.integers(len(pool.boxes)))
        px, bx = pool.pixels[i].float(), pool.boxes[i].copy()
        if rng.random() < 0.5:  # horizontal flip
            px = px.flip(-1)
            bx[:, 0] = 1.0 - bx[:, 0]
        pixels.append(px)
        boxes_list.append(bx)
        targets.append({"class_labels": torch.zeros(len(bx), dtype=torch.long), "boxes": torch.from_numpy(bx)})
    objectness, dense_boxes = dense_targets(boxes_list, grid)
    return torch.stack(pixels), targets, objectness, dense_boxes


def evaluate_pool(model, pool: _Pool, batch_size: int = 64) -> dict:
    """COCO metrics of ``model`` (on any device) on an in-memory pool (pycocotools, full ranked list)."""
    model.eval()
    device = next(model.parameters()).device
    detections = []
    with torch.no_grad():
        for start in range(0, len(pool.samples), batch_size):
            batch = pool.samples[start : start + batch_size]
            out = model(pixel_values=pool.pixels[start : start + batch_size].float().to(device))
            detections += sample_detections(out.logits.cpu(), out.pred_boxes.cpu(), batch, 0)
    model.train()
    return evaluate(ground_truth_dict(pool.samples), detections)


def train_reference(
    cfg: RecipeConfig, out: Path, budget_minutes: float | None = None, progress: bool = True, device: str = "cpu"
) -> dict:
    """Train (or resume) the reference model into ``out`` on ``device``; returns the training summary.

    ``out/best`` holds the best held-out checkpoint (safetensors + configs); ``out/last.pt``
    the resumable state; ``out/history.jsonl`` one line per evaluation. The summary holds this
    run's per-step total losses.

    Under torchrun: DistributedDataParallel, each rank trains on its contiguous part of every global
    batch (the effective batch stays ``cfg.batch_size``), with losses rescaled so that gradients and
    logged losses equal one process's (``_step_loss``); rank 0 alone evaluates and writes.
    """
    from probe_kit.console import progress_bar

    run_started = time.time()  # the budget counts the whole run, scene rendering included
    out = Path(out)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
    model, processor = build_model(cfg)
    grid = (cfg.image_size // model.config.patch_size, cfg.image_size // model.config.patch_size)
    model.to(device)
    aux = DenseHead(cfg.hidden_size).to(device)
    params = list(model.parameters()) + list(aux.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state_path = out / "last.pt"
    step, best_ap50, elapsed = 0, -1.0, 0.0
    if state_path.exists():
        state = torch.load(state_path, weights_only=True, map_location="cpu")
        if state["config"] != asdict(cfg) | {"easy_mix": list(cfg.easy_mix)}:
            raise ValueError(f"{state_path}: was made with a different recipe config; use another --out")
        model.load_state_dict(state["model"])
        aux.load_state_dict(state["aux"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_ap50, elapsed = state["step"], state["best_ap50"], state["elapsed"]

    spec = SceneSpec(cfg.scene_size, cfg.scene_size)
    easy_spec = SceneSpec(cfg.scene_size, cfg.scene_size, dict(zip(("easy", "medium", "hard"), cfg.easy_mix)))
    heldout = _render_pool(cfg.heldout_seed, cfg.heldout_frames, spec, processor, "heldout")
    main = _render_pool(cfg.train_seed, cfg.train_frames, spec, processor, "train")
    easy = _render_pool(cfg.easy_seed, cfg.easy_frames, easy_spec, processor, "train-easy")

    model.train()
    net = distributed.data_parallel(_Net(model, aux, grid))
    criterion = SetCriterion(num_classes=model.config.num_labels, eos_coef=model.config.eos_coefficient)
    losses: list[float] = []
    started = time.time() - elapsed

    def save_state() -> None:  # rank 0: everything a resumed run needs, written atomically
        state = {
            "config": asdict(cfg) | {"easy_mix": list(cfg.easy_mix)},
            "model": model.state_dict(),
            "aux": aux.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "best_ap50": best_ap50,
            "elapsed": time.time() - started,
        }
        torch.save(state, state_path.with_suffix(".tmp"))
        state_path.with_suffix(".tmp").replace(state_path)

    bar = progress_bar(total=cfg.steps, initial=step, desc="reference", show=progress and distributed.is_main())
    if progress and distributed.is_main():
        bar.write(distributed.effective_batch_line("reference", cfg.batch_size))
    while step < cfg.steps:
        over = budget_minutes is not None and time.time() - run_started > budget_minutes * 60
        if distributed.broadcast_object(over):  # rank 0's clock, so every rank stops at the same step
            if distributed.is_main():  # the steps since the last evaluation are kept for the resumed run
                save_state()
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        batch = _batch(step, cfg, main, easy, grid)  # the global batch; this rank trains on its part
        mine = slice(*distributed.shard_bounds(cfg.batch_size, distributed.rank(), distributed.world_size()))
        pixels, targets, objectness, dense_boxes = (part[mine] for part in batch)
        pixels, objectness, dense_boxes = pixels.to(device), objectness.to(device), dense_boxes.to(device)
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        out_model, pred = net(pixels, targets)
        dense = dense_loss(pred, objectness, dense_boxes)
        loss, parts = _step_loss(out_model, dense, batch, mine, criterion, cfg, model.config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        step += 1
        parts = distributed.mean_over_ranks(parts)  # the global batch's losses
        losses.append(parts.pop("loss"))
        bar.set_postfix(
            ce=parts["loss_ce"],
            l1=parts["loss_bbox"],
            giou=parts["loss_giou"],
            dense=parts["loss_dense"],
            refresh=False,
        )
        bar.update(1)
        if distributed.is_main() and (step % cfg.eval_every == 0 or step == cfg.steps):
            metrics = evaluate_pool(model, heldout)
            record = {
                "step": step,
                "minutes": (time.time() - started) / 60,
                "loss": losses[-1],
                **parts,
                "AP": metrics["AP"],
                "AP50": metrics["AP50"],
            }
            with open(out / "history.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.write(json.dumps(record))
            if metrics["AP50"] > best_ap50:
                best_ap50 = metrics["AP50"]
                model.save_pretrained(out / "best")
                processor.save_pretrained(out / "best")
                (out / "best" / "heldout_metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2))
            save_state()
    bar.close()
    return {"step": step, "best_AP50": best_ap50, "minutes": (time.time() - started) / 60, "losses": losses}


class _Net(nn.Module):
    """YOLOS with its loss plus the dense head on the final patch tokens: one module for DistributedDataParallel."""

    def __init__(self, model, aux: DenseHead, grid: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.aux, self.patches = model, aux, grid[0] * grid[1]

    def forward(self, pixels: torch.Tensor, targets: list[dict]):
        out = self.model(pixel_values=pixels, labels=targets, output_hidden_states=False)
        return out, self.aux(out.last_hidden_state[:, 1 : 1 + self.patches])


def _step_loss(out_model, dense: dict, batch, mine: slice, criterion: SetCriterion, cfg: RecipeConfig, config):
    """``(loss to backpropagate, logged floats)`` of this rank's images ``mine`` of the global ``batch``. Under
    torchrun each component is rescaled by its normalisers over the global batch (``distributed.global_batch_parts``),
    so gradients, and logged means over ranks, equal one process's."""
    set_parts, dense_parts = out_model.loss_dict, dense
    if distributed.world_size() > 1:
        _, targets, objectness, _ = batch
        n_det = config.num_detection_tokens
        set_parts = distributed.global_batch_parts(
            set_parts, criterion.normalisers(targets[mine], n_det), criterion.normalisers(targets, n_det)
        )
        dense_parts = distributed.global_batch_parts(
            dense_parts, dense_normalisers(objectness[mine]), dense_normalisers(objectness)
        )
    weights = {"loss_ce": 1.0, "loss_bbox": config.bbox_loss_coefficient, "loss_giou": config.giou_loss_coefficient}
    set_loss = sum(weights[k] * set_parts[k] for k in weights)
    dense_total = sum(DENSE_WEIGHTS[k] * dense_parts[k] for k in DENSE_WEIGHTS)
    loss = set_loss + cfg.dense_weight * dense_total
    logged = {"loss": loss, **{k: set_parts[k] for k in weights}, "loss_dense": dense_total}
    return loss, {k: float(v.detach()) for k, v in logged.items()}
