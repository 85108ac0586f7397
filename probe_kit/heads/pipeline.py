"""The one evaluation pipeline of exits folders, which ``evaluate-exits`` and the design comparison both run:

1. **Load** each folder (``Design``): its config, the base model rebuilt from the record, the heads.
2. **Held out**: only images that trained or early-stopped nothing in any folder are scored (dropped ones
   counted; all of them -> refused).
3. **One recording pass** per folder (``record``): every exit runs once per image, streamed, and its
   outputs are kept as ``ExitRecords``; FLOPs are measured at the largest input size.
4. **Policies from the records** (``fit_policies``, ``score``): each registered policy is fitted (a
   ``fitted`` one on records of the folder's *training* images, never scored ones) and every setting's
   exits, COCO metrics (one COCO evaluation per exit, ``PerImageChoice``) and GFLOPs are computed
   without running the model again.
5. **Timing** (``time_settings``): the unmodified model and the chosen settings, interleaved in one
   ``interleaved_latency`` run on the same images; an online policy runs live (its own cost included),
   an offline one replays its recorded exits.

GFLOPs per image count the blocks actually run, every exit head evaluated on the way (one for a static
exit; ``ExitHead.exit_gflops``) and, for a policy with a ``cost``, its evaluation at every intermediate
exit reached.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe_kit.data.identity import image_sha256
from probe_kit.data.sample import Sample
from probe_kit.data.spec import DataSpec
from probe_kit.heads.baselines import Baseline
from probe_kit.heads.interface import ExitHead
from probe_kit.heads.multi_exit import MultiExitYolos, Policy
from probe_kit.heads.policies import FittedPolicy, PolicyInputs, PolicySpec, static_exit
from probe_kit.heads.policy_registry import policy_spec
from probe_kit.heads.records import ExitRecords, record_exits, record_exits_sharded
from probe_kit.heads.store import ExitsConfig, load_exits
from probe_kit.metrics.per_image import PerImageChoice
from probe_kit.models.flops import FlopProfile, measure_flops
from probe_kit.models.loading import person_label_index
from probe_kit.models.runner import input_size, patch_pixels
from probe_kit.models.timing import Rounds, TimedRun, interleaved_latency


@dataclass(frozen=True)
class Timing:
    """How latency is measured: ``images`` scored images (evenly spaced), at least ``repeats`` interleaved rounds
    in a shuffled order (from ``seed``), more while a speed-up's 95% interval is wider than ``width`` of its ratio,
    up to ``max_repeats`` (default 3 x ``repeats``) rounds and ``seconds`` of timing.

    A static exit's compute does not depend on the image (one input size), so a few images time it;
    an adaptive setting's exits do, so its FLOPs over exactly the timed images are reported next to it.
    """

    images: int = 4
    repeats: int = 11
    warmup: int = 1
    threads: int = 1
    max_repeats: int | None = None
    seconds: float = 60.0
    width: float = 0.10
    seed: int = 0

    def rounds(self) -> Rounds:
        most = max(self.repeats, self.max_repeats if self.max_repeats is not None else 3 * self.repeats)
        return Rounds(self.repeats, most, self.seconds, self.width, self.seed)


def check_thresholds(thresholds: Sequence[float], name: str = "thresholds") -> None:
    """Policy thresholds are probabilities, IoUs or F1 cuts: finite numbers in [0, 1] (``nan`` fails both bounds)."""
    numbers = isinstance(thresholds, (list, tuple)) and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds
    )
    if not numbers or not thresholds:
        raise ValueError(f"{name}: expected a list of numbers in [0, 1], got {str(thresholds)[:60]}")


@dataclass
class Design:
    """One exits folder, loaded for scoring; ``record`` fills ``records``, ``profile`` and ``head_gflops``."""

    path: Path
    config: ExitsConfig
    model: torch.nn.Module
    processor: object
    multi: MultiExitYolos
    records: ExitRecords | None = None
    profile: FlopProfile | None = None
    chooser: PerImageChoice | None = None
    head_gflops: dict[int, float] | None = None
    policies_fitted_on: tuple[int, ...] = ()  # image ids of the records fitted policies learned from

    @classmethod
    def load(cls, path: Path, device: str) -> Design:
        model, processor, heads, config = load_exits(path, device=device)
        multi = MultiExitYolos(model, heads, person_label_index(model.config)).eval()
        return cls(Path(path), config, model, processor, multi)

    @property
    def heads(self) -> ExitHead:
        return self.multi.heads

    def record(self, samples: Sequence[Sample], size: tuple[int, int], progress: bool, sharded: bool) -> None:
        """Step 3: every exit once per image (``sharded``: each torchrun rank its share), FLOPs at ``size``."""
        self.profile = measure_flops(self.model, size)
        recorder = record_exits_sharded if sharded else record_exits
        self.records = recorder(self.multi, self.processor, samples, progress)
        patches = _patches(self.model, size)
        self.head_gflops = {k: self.heads.exit_gflops(k, self.profile, patches) for k in self.records.layers}

    def score_against(self, gt: dict) -> None:
        """One COCO evaluation per exit against ``gt``, from which every setting's metrics are combined."""
        detections = {k: self.records.detections(static_exit(self.records, k)) for k in self.records.layers}
        self.chooser = PerImageChoice(gt, detections)

    def tokens_read(self, layer: int, size: tuple[int, int]) -> int:
        """How many tokens exit ``layer`` reads on an input of ``size`` (what a gate pools)."""
        role = self.heads.token_role(layer)
        return {"det": self.heads.num_det, "cls": 1}.get(role) or _patches(self.model, size)


def _patches(model, size: tuple[int, int]) -> int:
    patch = patch_pixels(model)
    return (size[0] // patch) * (size[1] // patch)


BY_CONTENT = "content (sha256 of each image file)"
BY_ID = "image id (an exits folder predates content hashes: retrain it to decide by content)"


@dataclass(frozen=True)
class HeldOut:
    """Step 2's answer: the ``samples`` that trained nothing, how many were ``dropped``, and ``by`` what;
    ``in_training_caches``: for each cache the heads trained on that can still be read, how many of the
    evaluated images (all of them, dropped ones included) it holds and how many images it has."""

    samples: list[Sample]
    dropped: int
    by: str
    in_training_caches: dict[str, dict[str, int]]

    def to_json(self) -> dict:
        """The result.json keys: ``dropped_training_images``, ``held_out_by``, ``evaluated_vs_training_caches``."""
        return {
            "dropped_training_images": self.dropped,
            "held_out_by": self.by,
            "evaluated_vs_training_caches": self.in_training_caches,
        }


def held_out_line(result: dict) -> str:
    """``scored 40 held-out images (60 training images dropped, matched by content)``, for the console, and
    a clause naming each training cache whose images are not the evaluated ones (how many are shared)."""
    by = "content" if result.get("held_out_by", BY_CONTENT) == BY_CONTENT else "image id"
    line = (
        f"scored {len(result['scored_image_ids'])} held-out images ({result['dropped_training_images']} training "
        f"images dropped, matched by {by})"
    )
    for cache, counts in result.get("evaluated_vs_training_caches", {}).items():
        if not counts["shared"] == counts["evaluated"] == counts["cache_images"]:
            line += (
                f"; the evaluated data is not the data of the training cache {cache}: {counts['shared']} of its "
                f"{counts['evaluated']} images are among that cache's {counts['cache_images']}"
            )
    return line


def held_out(samples: Sequence[Sample], designs: Sequence[Design], data_spec: DataSpec) -> HeldOut:
    """Step 2: the samples that trained or early-stopped nothing in any design, decided by their bytes (by id only
    for folders made before content hashes were recorded); refuses when none is left."""
    recorded = [d.config.trained_hashes for d in designs]
    hashes = image_sha256(samples)
    if all(h is not None for h in recorded):
        trained, by = set().union(*recorded), BY_CONTENT
        kept = [s for s, h in zip(samples, hashes, strict=True) if h not in trained]
    else:
        trained, by = set().union(*(d.config.trained_ids for d in designs)), BY_ID
        kept = [s for s in samples if s.image_id not in trained]
    if not kept:
        split = designs[0].config.split if len(designs) == 1 else {}
        hint = (
            f"--sequences {','.join(split['val_groups'])}"
            if split.get("unit") == "sequence" and split.get("val_groups")
            else "other --sequences or --split second-half (overlapping images are dropped)"
        )
        where = designs[0].path if len(designs) == 1 else "the exits folders"
        raise ValueError(
            f"--data {data_spec.text()}: all {len(samples)} images trained or early-stopped the heads in {where}; "
            f"pass held-out data, e.g. {hint}"
        )
    return HeldOut(kept, len(samples) - len(kept), by, _in_training_caches(designs, hashes))


def _in_training_caches(designs: Sequence[Design], hashes: Sequence[str]) -> dict[str, dict[str, int]]:
    """For each readable cache the ``designs`` trained on: how many of the evaluated images (``hashes``) it holds.
    A cache moved or deleted since training is left out: held-out is decided by the folders' own hashes."""
    from probe_kit.cache.reader import FeatureCache

    evaluated, out = set(hashes), {}
    for cache in sorted({d.config.cache for d in designs}):
        try:
            with FeatureCache(Path(cache)) as opened:
                by_id = dict(zip((int(i) for i in opened.image_ids()), opened.image_hashes(), strict=True))
                fingerprint = opened.fingerprint
        except (OSError, ValueError):
            continue
        for design in (d for d in designs if d.config.cache == cache):
            if design.config.cache_fingerprint == fingerprint:  # still the cache it trained on, not one made since
                _check_recorded_hashes(design, by_id, cache)
        cached = set(by_id.values())
        out[cache] = {"evaluated": len(evaluated), "shared": len(evaluated & cached), "cache_images": len(cached)}
    return out


def _check_recorded_hashes(design: Design, by_id: dict[int, str], cache: str) -> None:
    """Refuse a folder whose recorded training hashes are not those of the same images in the cache it trained
    on: an edited ``config.json`` would otherwise score its training images as held-out."""
    config = design.config
    if config.trained_hashes is None:
        return
    pairs = zip(
        (*config.train_image_ids, *config.holdout_image_ids),
        (*config.train_image_sha256, *config.holdout_image_sha256),
        strict=True,
    )
    for image_id, digest in pairs:
        if image_id in by_id and by_id[image_id] != digest:
            raise ValueError(
                f"{design.path / 'config.json'}: the sha256 recorded for training image {image_id} is not that "
                f"image's in the cache the heads trained on ({cache}): the folder was edited after training; "
                "retrain it"
            )


def largest_input(design: Design, samples: Sequence[Sample]) -> tuple[int, int]:
    """The largest (w, h) the processor makes of ``samples``: where FLOPs are measured."""
    return max({input_size(design.processor, s) for s in samples}, key=lambda s: s[0] * s[1])


def fit_policies(design: Design, names: Sequence[str], seed: int, target_f1: float, progress: bool) -> dict:
    """Step 4a: each named policy fitted for ``design``: ``{name: (spec, FittedPolicy)}``."""
    specs = [policy_spec(n, "--policies") for n in names]
    training = _training_records(design, progress) if any(s.fitted for s in specs) else None
    design.policies_fitted_on = training.image_ids if training is not None else ()
    fitted = {}
    for spec in specs:
        inputs = PolicyInputs(training if spec.fitted else None, seed, target_f1)
        fitted[spec.name] = (spec, spec.fit(inputs))
    return fitted


def _training_records(design: Design, progress: bool) -> ExitRecords:
    """Records of the folder's training images, reloaded from the dataset of the cache the heads trained on."""
    from probe_kit.cache.reader import FeatureCache

    config = design.config
    with FeatureCache(Path(config.cache)) as cache:
        by_id = dict(zip((int(i) for i in cache.image_ids()), cache.image_hashes(), strict=True))
        if config.trained_hashes is None:  # a folder made before content hashes: by id
            ids = set(config.train_image_ids)
            missing = ids - by_id.keys()
        else:  # the cache's rows holding those bytes
            wanted = set(config.train_image_sha256)
            ids = {i for i, digest in by_id.items() if digest in wanted}
            missing = wanted - {by_id[i] for i in ids}
        if missing:
            raise ValueError(f"{design.path}: {len(missing)} training images are no longer in {cache.path}")
        samples = [s for s in cache.load_dataset(ids) if s.image_id in ids]  # refused if their bytes changed
    return record_exits(design.multi, design.processor, samples, progress)


@dataclass(frozen=True, eq=False)
class Setting:
    """One way to run a design: every image at ``layer`` (``policy`` None: static), or a fitted policy at
    ``threshold``; ``layers`` [I] is each scored image's exit."""

    design: Design
    layers: torch.Tensor
    spec: PolicySpec | None = None
    fitted: FittedPolicy | None = None
    threshold: float | None = None

    @property
    def static(self) -> bool:
        return self.spec is None

    def timed_policy(self, picks: np.ndarray) -> list[Policy]:
        """What ``MultiExitYolos`` runs for the timed images ``picks``: live when the policy has a rule."""
        if self.static:
            return [Policy.fixed(int(self.layers[0]))] * len(picks)
        if self.fitted.rule is not None:
            return [Policy.online(self.fitted.rule, self.threshold)] * len(picks)
        return [Policy.replay(int(k)) for k in self.layers[picks].tolist()]


def settings(design: Design, fitted: dict, thresholds: dict[str, Sequence[float]]) -> list[Setting]:
    """Step 4b: the static exits of ``design``, then every fitted policy at each of its thresholds."""
    records = design.records
    out = [Setting(design, static_exit(records, k)) for k in records.layers]
    for name, (spec, policy) in fitted.items():
        out += [Setting(design, policy.choose(records, t), spec, policy, t) for t in thresholds[name]]
    return out


def score(setting: Setting, keys: Sequence[str] | None = ("AP", "AP50", "AP75")) -> dict:
    """COCO metrics ``keys`` (None: all), mean GFLOPs and exit histogram of ``setting`` over the scored images."""
    records, layers = setting.design.records, setting.layers
    metrics = setting.design.chooser.score(dict(zip(records.image_ids, layers.tolist(), strict=True)))
    return {
        **(metrics if keys is None else {k: metrics[k] for k in keys}),
        "mean_gflops": mean_gflops(setting, layers),
        "exit_histogram": {str(k): c for k, c in sorted(Counter(layers.tolist()).items())},
    }


def mean_gflops(setting: Setting, layers: torch.Tensor) -> float:
    """Mean over images of blocks to each exit in ``layers``, the heads evaluated on the way (only its own for a
    static exit) and the policy's cost at every intermediate exit reached."""
    design = setting.design
    exits, head = design.records.layers, design.head_gflops
    size = design.profile.input_size
    cost = setting.spec.cost if setting.spec is not None else None
    per_image = []
    for k in layers.tolist():
        heads = head[k] if setting.static else sum(head[e] for e in exits if e <= k)
        reached = [e for e in exits[:-1] if e <= k] if cost else []
        extra = sum(cost(design.tokens_read(e, size), design.model.config.hidden_size) for e in reached)
        per_image.append(design.profile.to_exit(k, head=0.0) + heads + extra)
    return float(np.mean(per_image))


def timed_picks(samples: Sequence[Sample], timing: Timing) -> np.ndarray:
    """Indices of the ``timing.images`` scored images timed, evenly spaced."""
    return np.unique(np.linspace(0, len(samples) - 1, min(timing.images, len(samples))).round().astype(int))


def time_settings(
    reference: Design,
    samples: Sequence[Sample],
    plans: dict,
    timing: Timing,
    progress: bool,
    baselines: Sequence[Baseline] = (),
) -> TimedRun:
    """Step 5: interleaved latency of the unmodified model (``full``), each planned ``Setting`` and each baseline
    model (``baseline-<i>``, at its own input size) on the same timed images (batch 1)."""
    picks = timed_picks(samples, timing)
    params = next(reference.model.parameters())
    images = [samples[i].load_image() for i in picks]  # decoded once, resized by each model's own processor

    def inputs(processor) -> list[torch.Tensor]:
        return [
            processor(images=[image], return_tensors="pt")["pixel_values"].to(device=params.device, dtype=params.dtype)
            for image in images
        ]

    pixels = inputs(reference.processor)

    def runner(run: Callable[[torch.Tensor, int], object]) -> Callable[[], None]:
        def go() -> None:
            with torch.no_grad():
                for i, p in enumerate(pixels):
                    run(p, i)

        return go

    runs = {"full": runner(lambda p, _i: reference.model(pixel_values=p))}
    for key, setting in plans.items():
        policies = setting.timed_policy(picks)
        runs[key] = runner(lambda p, i, s=setting, ps=policies: s.design.multi(p, ps[i]))
    for i, baseline in enumerate(baselines):
        own = inputs(baseline.processor)
        runs[f"baseline-{i}"] = runner(lambda _p, j, m=baseline.model, own=own: m(pixel_values=own[j]))
    device = str(params.device)
    return interleaved_latency(
        runs, len(picks), timing.rounds(), timing.warmup, timing.threads, progress, "full", device
    )


def by_difficulty(samples: Sequence[Sample], layers: torch.Tensor) -> dict[str, dict[str, int]]:
    """Images per exit layer for each difficulty label (``all`` where the data have none)."""
    counts: dict[str, Counter] = {}
    for sample, layer in zip(samples, layers.tolist(), strict=True):
        counts.setdefault(sample.meta.get("difficulty", "all"), Counter())[layer] += 1
    return {d: {str(k): c for k, c in sorted(cnt.items())} for d, cnt in sorted(counts.items())}
