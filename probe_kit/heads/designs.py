"""Comparing exit designs: exits folders (det or dense heads, frozen or fine-tuned blocks) x policies x thresholds.

Every folder is scored on the same images: those of ``--data`` that trained or early-stopped
nothing in *any* of the folders (``scored_image_ids``). Each folder runs once per image with
every exit recorded (``record_exits``); every setting's exits, AP (``PerImageChoice``) and GFLOPs
come from those records. Policies:

- ``static``: every image at one exit (threshold ``null``, ``layer`` set);
- ``confidence``, ``patience``: the online rules of ``heads/policies.py``;
- ``learned``: a gate per exit (``heads/gate.py``) trained on records of the folder's *training*
  images (``train_image_ids``, reloaded from its cache's dataset), never on scored ones; its
  evaluations are added to the GFLOPs and it runs inside the timed model;
- ``oracle``: the earliest exit meeting the gate's target per image (``heads/oracle.py``), swept
  over the F1 cut: a **bound**, flagged ``"bound": true``, kept off the Pareto front and never timed.

The Pareto front is over (AP50 up, mean GFLOPs down) of every non-bound setting. Latency is then
measured for the unmodified model, up to ``MAX_TIMED_FRONT`` front points (evenly spaced along it,
both ends included) and every (folder, policy)'s cheapest setting within ``max_ap50_loss`` of the
full model, all interleaved in one ``interleaved_latency`` run (``models/timing.py``); the *latency
check* says, per timed front point, whether its measured speed-up is measurable and on the side
its FLOPs predict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe_kit.data.spec import DataSpec
from probe_kit.heads.dense_exit import DenseExitHeads, dense_head_gflops
from probe_kit.heads.evaluate import Timing, check_thresholds
from probe_kit.heads.gate import TARGET_F1, gate_gflops, train_gates
from probe_kit.heads.multi_exit import MultiExitYolos, Policy
from probe_kit.heads.oracle import BOUND_LABEL, oracle_policy
from probe_kit.heads.policies import POLICIES, register_policy, static_exit
from probe_kit.heads.records import ExitRecords, record_exits
from probe_kit.heads.store import load_exits
from probe_kit.metrics.coco import ground_truth_dict
from probe_kit.metrics.per_image import PerImageChoice
from probe_kit.models.flops import FlopProfile, measure_flops
from probe_kit.models.loading import person_label_index
from probe_kit.models.runner import input_size
from probe_kit.models.timing import interleaved_latency, speedup

POLICY_CHOICES = ("confidence", "patience", "learned", "oracle")
MAX_TIMED_FRONT = 8  # front points timed (evenly spaced along it): timing every point would dominate the run
THRESHOLDS = {
    "confidence": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
    "patience": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    "learned": (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    "oracle": (0.5, 0.7, 0.8, 0.9, 0.95, 1.0),  # the F1 cut
}


@dataclass
class _Folder:
    path: Path
    config: dict
    model: torch.nn.Module
    processor: object
    multi: MultiExitYolos
    profile: FlopProfile | None = None
    records: ExitRecords | None = None
    gate_rule: str | None = None  # name of the registered learned rule (timed live)
    gate_image_ids: tuple[int, ...] = ()  # the images the gates trained on

    def describe(self) -> dict:
        return {
            "exits_dir": str(self.path.resolve()),
            "head": self.config.get("head", "det"),
            "finetuned_blocks": self.config.get("finetuned_blocks", []),
            "layers": list(self.records.layers) if self.records else self.config["layers"],
            "heads_trained_on_image_ids": self.config["train_image_ids"],
            "heads_early_stopped_on_image_ids": self.config["holdout_image_ids"],
            "gates_trained_on_image_ids": list(self.gate_image_ids),
        }


def parse_policies(text: str) -> tuple[str, ...]:
    """``confidence,patience,learned,oracle`` -> a tuple; unknown names refused in one line."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in names if p not in POLICY_CHOICES]
    if bad or not names:
        raise ValueError(f"--policies {text!r}: expected a comma-separated subset of {','.join(POLICY_CHOICES)}")
    return names


def _exit_costs(folder: _Folder, size: tuple[int, int]) -> tuple[dict[int, float], dict[int, float]]:
    """GFLOPs per exit of its head and of its learned gate, for an input of ``size`` (w, h).

    A det head costs the profile's head (LayerNorm + MLPs on the det tokens); a dense head its MLP
    on every patch token (NMS not counted). A gate pools the tokens its exit reads (``gate_gflops``).
    """
    config = folder.model.config
    heads, profile = folder.multi.heads, folder.profile
    patch = config.patch_size[0] if isinstance(config.patch_size, (list, tuple)) else config.patch_size
    patches = (size[0] // patch) * (size[1] // patch)
    head, tokens = {}, {}
    for k in heads.layers:
        if isinstance(heads, DenseExitHeads) and k != heads.depth:
            head[k], tokens[k] = dense_head_gflops(heads.dense[str(k)], patches, config.hidden_size), patches
        else:
            head[k], tokens[k] = profile.head, config.num_detection_tokens
    return head, {k: gate_gflops(n, config.hidden_size) for k, n in tokens.items()}


def _mean_gflops(
    profile: FlopProfile, head: dict[int, float], gate: dict[int, float], layers: torch.Tensor, policy: str
) -> float:
    """Blocks to each image's exit + every head evaluated on the way (only its own for ``static``) + for
    ``learned`` the gate of every intermediate exit reached, averaged over images. ``oracle`` is counted as an
    adaptive policy without gates."""
    exits = sorted(head)
    per_image = []
    for k in layers.tolist():
        heads = head[k] if policy == "static" else sum(head[e] for e in exits if e <= k)
        gates = sum(gate[e] for e in exits[:-1] if e <= k) if policy == "learned" else 0.0
        per_image.append(profile.to_exit(k, head=0.0) + heads + gates)
    return float(np.mean(per_image))


def _training_records(folder: _Folder, progress: bool) -> ExitRecords:
    """Records of the folder's training images, reloaded from the dataset of the cache the heads trained on."""
    from probe_kit.cache.reader import FeatureCache

    with FeatureCache(Path(folder.config["cache"])) as cache:
        spec = cache.data_spec()
    wanted = set(folder.config["train_image_ids"])
    samples = [s for s in spec.load() if s.image_id in wanted]
    if len(samples) != len(wanted):
        raise ValueError(f"{folder.path}: {len(wanted) - len(samples)} training images are no longer in {spec.text()}")
    return record_exits(folder.multi, folder.processor, samples, progress)


def compare_designs(
    exits_dirs: Sequence[Path],
    data_spec: DataSpec,
    policies: Sequence[str] = POLICY_CHOICES,
    thresholds: dict[str, Sequence[float]] | None = None,
    max_ap50_loss: float = 0.01,
    gate_cut: float = TARGET_F1,
    seed: int = 0,
    device: str = "cpu",
    timing: Timing | None = None,
    progress: bool = True,
) -> dict:
    """The ``designs`` part of ``evaluate-exits`` over several folders (see the module docstring)."""
    parse_policies(",".join(policies))  # unknown names refused in one line
    if not 0 <= max_ap50_loss < 1:
        raise ValueError(f"--max-ap50-loss: expected an AP50 difference in [0, 1), got {max_ap50_loss}")
    for policy, cuts in (thresholds or {}).items():
        check_thresholds(cuts, f"thresholds[{policy!r}]")
    thresholds = {**THRESHOLDS, **(thresholds or {})}
    timing = timing or Timing()
    resolved = [Path(p).resolve() for p in exits_dirs]
    twice = next((p for i, p in enumerate(exits_dirs) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        raise ValueError(f"--exits {twice}: given twice; each exits folder is one design")
    folders = []
    for path in exits_dirs:
        model, processor, heads, config = load_exits(path, device=device)
        multi = MultiExitYolos(model, heads, person_label_index(model.config)).eval()
        folders.append(_Folder(Path(path), config, model, processor, multi))
    trained = set().union(*(set(f.config["train_image_ids"]) | set(f.config["holdout_image_ids"]) for f in folders))
    loaded = data_spec.load()
    samples = [s for s in loaded if s.image_id not in trained]
    if not samples:
        raise ValueError(
            f"--data {data_spec.text()}: all {len(loaded)} images trained or early-stopped heads in the exits folders; "
            "pass held-out data"
        )
    reference = next((f for f in folders if not f.config.get("finetuned_blocks")), None)
    if reference is None:
        raise ValueError(
            "--exits: give at least one folder without fine-tuned blocks (its last exit is the full model)"
        )
    gt = ground_truth_dict(samples)
    difficulty = [s.meta.get("difficulty", "all") for s in samples]
    size = max({input_size(folders[0].processor, s) for s in samples}, key=lambda s: s[0] * s[1])
    designs, plans = [], {}
    for index, folder in enumerate(folders):
        folder.profile = measure_flops(folder.model, size)
        folder.records = records = record_exits(folder.multi, folder.processor, samples, progress)
        static_detections = {k: records.detections(static_exit(records, k)) for k in records.layers}
        chooser = PerImageChoice(gt, static_detections)
        settings = [("static", None, static_exit(records, k)) for k in records.layers]
        head_cost, gate_cost = _exit_costs(folder, size)
        gate_summary = None
        if "learned" in policies:
            training = _training_records(folder, progress)
            gates, gate_summary = train_gates(training, gate_cut, seed)
            folder.gate_image_ids = training.image_ids
            folder.gate_rule = f"learned:{index}"
            register_policy(folder.gate_rule, rule=gates.rule())
        for policy in policies:
            fn = oracle_policy if policy == "oracle" else POLICIES[folder.gate_rule if policy == "learned" else policy]
            settings += [(policy, t, fn(records, t)) for t in thresholds[policy]]
        for policy, threshold, layers in settings:
            gflops = _mean_gflops(folder.profile, head_cost, gate_cost, layers, policy)
            entry = {
                "exits_dir": str(folder.path.resolve()),
                "head": folder.config.get("head", "det"),
                "finetuned_blocks": folder.config.get("finetuned_blocks", []),
                "policy": BOUND_LABEL if policy == "oracle" else policy,
                "threshold": threshold,
                "layer": int(layers[0]) if policy == "static" else None,
                **chooser.score(dict(zip(records.image_ids, layers.tolist()))),
                "mean_gflops": gflops,
                "exit_histogram": {str(k): c for k, c in sorted(Counter(layers.tolist()).items())},
                "exit_by_difficulty": _by_difficulty(difficulty, layers),
                "bound": policy == "oracle",
            }
            if policy == "learned":
                entry["gate"] = {
                    "gflops_per_evaluation": {str(k): v for k, v in gate_cost.items() if k != records.layers[-1]},
                    "target_f1": gate_cut,
                    "training": gate_summary,
                }
            designs.append(entry)
            plans[len(designs) - 1] = (folder, policy, threshold, layers)
    full = next(
        d
        for d in designs
        if d["exits_dir"] == str(reference.path.resolve()) and d["layer"] == reference.records.layers[-1]
    )
    for d in designs:  # against the unmodified model, whichever folder it came with
        d["flops_speedup"] = reference.profile.full / d["mean_gflops"]
    front = pareto_front(designs)
    timed = set(_spread(front, MAX_TIMED_FRONT))
    for key in {(d["exits_dir"], d["policy"]) for d in designs if not d["bound"] and d["policy"] != "static"}:
        within = [
            i
            for i, d in enumerate(designs)
            if (d["exits_dir"], d["policy"]) == key and d["AP50"] >= full["AP50"] - max_ap50_loss
        ]
        if within:
            timed.add(min(within, key=lambda i: designs[i]["mean_gflops"]))
    latency = _time(reference, samples, {i: plans[i] for i in sorted(timed)}, timing, device, progress)
    for i in sorted(timed):
        designs[i]["latency"] = latency[i].to_json()
        designs[i]["measured_speedup"] = speedup(latency["full"], latency[i])
    return {
        "scored_image_ids": [int(s.image_id) for s in samples],
        "dropped_training_images": len(loaded) - len(samples),
        "full_model": {
            "exits_dir": full["exits_dir"],
            "AP": full["AP"],
            "AP50": full["AP50"],
            "gflops": reference.profile.full,
            "latency": latency["full"].to_json(),
        },
        "max_ap50_loss": max_ap50_loss,
        "folders": [f.describe() for f in folders],
        "designs": designs,
        "pareto_front": front,
        "latency_check": latency_check(designs, front),
        "oracle": "bound, not a result: each image at the earliest exit whose kept detections reach F1 >= the cut "
        "against the final layer's (it looks at every exit, so no policy can run it)",
        "timing": {"images": min(timing.images, len(samples)), "repeats": timing.repeats, "threads": timing.threads},
    }


def _by_difficulty(difficulty: Sequence[str], layers: torch.Tensor) -> dict[str, dict[str, int]]:
    """Images per exit layer for each difficulty label (``all`` where the data have none)."""
    counts: dict[str, Counter] = {}
    for label, layer in zip(difficulty, layers.tolist()):
        counts.setdefault(label, Counter())[layer] += 1
    return {d: {str(k): c for k, c in sorted(cnt.items())} for d, cnt in sorted(counts.items())}


def _time(reference: _Folder, samples, plans: dict, timing: Timing, device: str, progress: bool) -> dict:
    """Interleaved latency of the unmodified model (``full``) and every planned setting on the same images."""
    picks = np.unique(np.linspace(0, len(samples) - 1, min(timing.images, len(samples))).round().astype(int))
    params = next(reference.model.parameters())
    pixels = [
        reference.processor(images=[samples[i].load_image()], return_tensors="pt")["pixel_values"].to(
            device=params.device, dtype=params.dtype
        )
        for i in picks
    ]

    def runner(folder: _Folder | None, policies: list[Policy] | None):
        def go() -> None:
            with torch.no_grad():
                for i, p in enumerate(pixels):
                    reference.model(pixel_values=p) if folder is None else folder.multi(p, policies[i])

        return go

    settings = {"full": runner(None, None)}
    for key, (folder, policy, threshold, layers) in plans.items():
        if policy == "static":
            chosen = [Policy("fixed", layer=int(layers[0]))] * len(picks)
        elif policy == "learned":  # live: the gate runs, so its cost is in the measurement
            chosen = [Policy(folder.gate_rule, threshold=threshold)] * len(picks)
        else:
            chosen = [Policy("replay", layer=int(layers[i])) for i in picks]
        settings[key] = runner(folder, chosen)
    return interleaved_latency(settings, len(picks), timing.repeats, timing.warmup, timing.threads, progress)


def _spread(indices: Sequence[int], most: int) -> list[int]:
    """At most ``most`` of ``indices``, evenly spaced along them, both ends kept."""
    if len(indices) <= most:
        return list(indices)
    return [indices[j] for j in sorted({round(i * (len(indices) - 1) / (most - 1)) for i in range(most)})]


def pareto_front(designs: Sequence[dict]) -> list[int]:
    """Indices of the non-bound designs that no other non-bound design beats on AP50 (up) and mean GFLOPs
    (down) together, cheapest first; of identical points the first listed stands for them."""
    candidates = [i for i, d in enumerate(designs) if not d["bound"]]

    def beats(j: int, i: int) -> bool:
        a, b = designs[i], designs[j]
        if b["AP50"] < a["AP50"] or b["mean_gflops"] > a["mean_gflops"]:
            return False
        return b["AP50"] > a["AP50"] or b["mean_gflops"] < a["mean_gflops"] or j < i

    front = [i for i in candidates if not any(beats(j, i) for j in candidates if j != i)]
    return sorted(front, key=lambda i: designs[i]["mean_gflops"])


def _side(ratio: float, measurable: bool = True) -> str:
    if not measurable or abs(ratio - 1) < 0.05:
        return "same"
    return "faster" if ratio > 1 else "slower"


def latency_check(designs: Sequence[dict], front: Sequence[int]) -> list[dict]:
    """Per timed front point: what the FLOPs predict (faster / slower / same: within 5%) against what was
    measured (same: a per-round IQR holding 1, or within 5%), and whether the two agree."""
    out = []
    for i in front:
        d = designs[i]
        if "measured_speedup" not in d:
            continue
        measured = d["measured_speedup"]
        predicted, found = _side(d["flops_speedup"]), _side(measured["ratio"], measured["measurable"])
        out.append(
            {
                "design": i,
                "flops_speedup": d["flops_speedup"],
                "measured_speedup": measured,
                "predicted": predicted,
                "measured": found,
                "agrees": predicted == found,
            }
        )
    return out


def design_lines(result: dict) -> list[str]:
    """What ``evaluate-exits --policies`` prints: the full model, the Pareto front with latency, the oracle's bound."""
    from probe_kit.decision.design import design_name, setting_name
    from probe_kit.models.timing import describe_speedup

    full = result["full_model"]
    lines = [
        (
            f"scored {len(result['scored_image_ids'])} held-out images ({result['dropped_training_images']} training "
            f"images dropped); {len(result['designs'])} settings over {len(result['folders'])} exits folders"
        ),
        (
            f"full model: AP50 {full['AP50']:.4f}  {full['gflops']:.3f} GFLOPs  {full['latency']['median_ms']:.2f} ms "
            f"(IQR {full['latency']['iqr_ms']:.2f})"
        ),
        "Pareto front (AP50 vs mean GFLOPs; the oracle is a bound and kept off it):",
    ]
    for i in result["pareto_front"]:
        d = result["designs"][i]
        measured = f"  measured: {describe_speedup(d['measured_speedup'])}" if "measured_speedup" in d else ""
        lines.append(
            f"  {setting_name(d)}: AP50 {d['AP50']:.4f}  {d['mean_gflops']:.3f} GFLOPs "
            f"(FLOPs {d['flops_speedup']:.2f}x){measured}"
        )
    checks = result["latency_check"]
    disagree = [c for c in checks if not c["agrees"]]
    lines.append(
        f"latency check: {len(checks) - len(disagree)} of {len(checks)} timed front points measured on the side "
        "their FLOPs predict (same: within 5% or not measurable)"
    )
    for c in disagree:
        d = result["designs"][c["design"]]
        lines.append(
            f"  {setting_name(d)}: FLOPs predict {c['predicted']} ({c['flops_speedup']:.2f}x); "
            f"measured {c['measured']}: {describe_speedup(c['measured_speedup'])}"
        )
    bounds = [d for d in result["designs"] if d["bound"] and d["AP50"] >= full["AP50"] - result["max_ap50_loss"]]
    if bounds:
        b = min(bounds, key=lambda d: d["mean_gflops"])
        lines.append(
            f"oracle bound (not a result): {design_name(b)}, F1 cut {b['threshold']}: "
            f"AP50 {b['AP50']:.4f} at {b['mean_gflops']:.3f} GFLOPs ({b['flops_speedup']:.2f}x by FLOPs)"
        )
    return lines
