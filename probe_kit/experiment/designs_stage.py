"""The exit-design comparison stage of ``probe-kit run``: YAML ``exits: designs:``.

Trains one exits folder per (head type, fine-tuned blocks) at the study's exit layers (the det /
frozen folder is the ``exits`` stage's own), compares them with every policy on the same held-out
images (``heads/designs.py``) and recommends a design within the YAML ``decision: max_ap50_loss``
(``decision/design.py``). Writes ``designs/result.json`` and ``designs/recommendation.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from probe_kit.errors import UserError
from probe_kit.options import NonNegativeInt, PositiveFloat, PositiveInt, check_fields

HEADS = ("det", "dense")


@dataclass(frozen=True)
class DesignsConfig:
    """``exits: designs:`` in an experiment YAML."""

    heads: tuple[str, ...] = HEADS  # HEAD_TYPES names
    finetune_blocks: tuple[NonNegativeInt, ...] = (0, 2)  # 0 = frozen backbone (heads only, from the cache)
    joint: tuple[str, ...] = ()  # head types also trained jointly (every block, exit losses by depth; --regime joint)
    joint_epochs: PositiveInt | None = None  # live epochs of the joint folders (default finetune_epochs)
    joint_lr: PositiveFloat | None = None  # their learning rate (default the exits' finetune_lr)
    self_distill_epochs: NonNegativeInt = 0  # then the joint folders' heads alone, distilled (LGViT's second stage)
    finetune_epochs: PositiveInt = 2
    # det exits on k detection tokens (--det-tokens), as frozen folders and, where joint names det, joint ones
    det_tokens: tuple[PositiveInt, ...] = ()
    epochs: PositiveInt | None = None  # head epochs of the added folders (default: the exits stage's)
    policies: tuple[str, ...] = ("confidence", "patience", "learned", "oracle")  # POLICIES names
    timing_images: PositiveInt = 16
    timing_repeats: PositiveInt = 15
    # what a team would deploy instead (heads/baselines.py): the model at fractions of its input size, other models
    baseline_resolutions: tuple[PositiveFloat, ...] = ()
    baseline_models: tuple[str, ...] = ()

    @classmethod
    def from_yaml(cls, raw: Any, where: str) -> DesignsConfig:
        """Validated from the YAML mapping; errors name ``where.key`` (one line)."""
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a mapping with keys from {[f.name for f in fields(cls)]}")
        from probe_kit.heads import HEAD_TYPES, POLICIES

        config = cls(**check_fields(cls, raw, prefix=f"{where}.", noun="key"))
        if 0 not in config.finetune_blocks or not config.heads or not config.policies:
            raise UserError(f"{where}: expected heads and policies, and finetune_blocks including 0 (frozen)")
        named = (("heads", config.heads, HEAD_TYPES), ("joint", config.joint, HEAD_TYPES))
        for key, names, known in (*named, ("policies", config.policies, POLICIES)):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise UserError(f"{where}.{key}: {unknown[0]!r} is not registered; expected some of {', '.join(known)}")
        if config.baseline_resolutions:
            from probe_kit.heads.baselines import check_fractions

            values = config.baseline_resolutions
            try:
                check_fractions(values, f"{where}.baseline_resolutions {','.join(map(str, values))!r}")
            except ValueError as err:
                raise UserError(str(err)) from None
        return config


def designs_stage(cfg, cache_path: Path, data_text: str, out: Path, say: Callable[[str], None]) -> dict | None:
    """Run the comparison for ``cfg.exits["designs"]``; returns the recommendation (None: no ``designs`` key, or
    no exits folder from the ``exits`` stage). Folders are retrained only when their inputs changed."""
    from probe_kit.cache.reader import FeatureCache
    from probe_kit.data.spec import parse_data_spec
    from probe_kit.decision import criteria_from
    from probe_kit.decision.design import recommend_design
    from probe_kit.heads.designs import compare_designs
    from probe_kit.heads.options import ExitTraining
    from probe_kit.heads.pipeline import Timing
    from probe_kit.heads.store import read_exits_config, stamp_inputs_key, up_to_date
    from probe_kit.heads.training import train_exits
    from probe_kit.io import write_json

    base = out / "exits"
    if "designs" not in cfg.exits or not (base / "config.json").is_file():
        return None
    spec = DesignsConfig.from_yaml(cfg.exits["designs"], "exits.designs")
    base_config = read_exits_config(base)
    layers, opts = base_config.layers, ExitTraining.from_json(base_config.training)
    with FeatureCache(cache_path) as cache:
        fingerprint = cache.fingerprint
    folders = []
    regimes = [("frozen" if k == 0 else "finetune", k) for k in spec.finetune_blocks]
    plan = [(head, regime, k, None) for head in spec.heads for regime, k in regimes]
    plan += [(h, "joint", 0, None) for h in spec.joint]
    token_regimes = ("frozen", "joint") if "det" in spec.joint else ("frozen",)
    plan += [("det", regime, 0, t) for t in spec.det_tokens for regime in token_regimes]
    for head, regime, k, tokens in plan:
        if head == "det" and regime == "frozen" and tokens is None:
            folders.append(base)
            continue
        name = f"{head}-{regime if regime != 'finetune' else f'finetune{k}'}" + (f"-k{tokens}" if tokens else "")
        folder = out / "designs" / name
        live = {"finetune_epochs": spec.finetune_epochs}
        if regime == "joint":
            live = {"finetune_epochs": spec.joint_epochs or spec.finetune_epochs, "finetune_lr": spec.joint_lr}
            live["finetune_lr"] = live["finetune_lr"] or opts.finetune_lr
            live["self_distill_epochs"] = spec.self_distill_epochs
        training = replace(
            opts, epochs=spec.epochs or opts.epochs, finetune_blocks=k, regime=regime, det_tokens=tokens, **live
        )
        text = json.dumps([fingerprint, head, list(layers), asdict(training), cfg.seed], sort_keys=True, default=list)
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        if up_to_date(folder, key):
            say(f"[designs] {folder.name}: up to date")
        else:
            on = f" on {tokens} det tokens" if tokens else ""
            say(f"[designs] training {head} exits{on} at layers {list(layers)}, {regime} regime -> {folder}")
            train_exits(cache_path, layers, folder, head, cfg.seed, training, device=cfg.device)
            stamp_inputs_key(folder, key)
        folders.append(folder)
    criteria = criteria_from(cfg.decision, "decision")
    data_spec = parse_data_spec(data_text, stride=cfg.stride, min_visibility=cfg.min_visibility, detector=cfg.detector)
    say(f"[designs] comparing {len(folders)} exits folders x {list(spec.policies)} on held-out images")
    result = compare_designs(
        folders,
        data_spec,
        spec.policies,
        max_ap50_loss=criteria.max_ap50_loss,
        seed=cfg.seed,
        device=cfg.device,
        timing=Timing(images=spec.timing_images, repeats=spec.timing_repeats),
        baseline_resolutions=spec.baseline_resolutions,
        baseline_models=spec.baseline_models,
    )
    result["command"] = f"probe-kit run (experiment {cfg.name!r}, exits.designs)"
    write_json(out / "designs" / "result.json", result)
    recommendation = recommend_design(result, criteria.max_ap50_loss, criteria.min_speedup)
    write_json(out / "designs" / "recommendation.json", recommendation)
    say("[designs] " + "\n[designs] ".join(recommendation["rationale"]))
    return recommendation
