"""``vqtok train``: train or fine-tune a VQGAN tokenizer on an image folder or WebDataset shards."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqtok.commands import add_device_argument, add_out_argument, add_progress_argument, device_from_args, positive_int

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from vqtok.training.config import TrainConfig


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a VQGAN tokenizer (VQ, FSQ or LFQ quantizer) on an image folder or WebDataset shards",
        description=(
            "Train a VQGAN (L1/L2 + LPIPS + PatchGAN hinge loss; nearest-code VQ with codebook tricks for high usage, "
            "or FSQ / LFQ with model.quantizer) and export "
            "OUT/final as a tokenizer folder (use it with --model). Resumes from OUT's newest checkpoint. "
            "Under torchrun each process takes its share of the data (DDP)."
        ),
    )
    p.add_argument("--data", required=True, help="image folder, or shards: 'shards/train-{000000..000099}.tar' (quote it)")
    add_out_argument(p, "run folder (checkpoints/, log.jsonl, images/, final/)")
    p.add_argument("--config", default=None,
                   help="training config YAML or JSON (default: OUT/train_config.yaml when continuing a run, "
                        "else the default tokenizer's recipe)")
    p.add_argument("--steps", type=int, default=None, help="override config steps")
    p.add_argument("--batch-size", type=positive_int, default=None, help="override config batch_size")
    p.add_argument("--lr", type=float, default=None, help="override config lr")
    p.add_argument("--val-data", default=None, help="validation image folder / shards (PSNR and codebook usage)")
    p.add_argument("--init", default=None, metavar="MODEL_DIR", help="start from these weights (fine-tuning; same architecture): a model folder or default@v1")
    p.add_argument("--from-checkpoint", default=None, metavar="CKPT_DIR",
                   help="start this new run from another run's checkpoint (RUN/checkpoints/step-NNNNNNN): its weights, "
                        "optimizer, EMA and step; the config is that run's unless --config / --set change it (e.g. "
                        "--set total_steps=30000); used only while OUT has no checkpoint, so the same command later "
                        "continues OUT")
    p.add_argument("--perceptual-weight", type=float, default=None, help="override loss.perceptual_weight (0 = no VGG16 needed)")
    add_device_argument(p, default=None, default_help="the config's device, auto")
    p.add_argument("--workers", type=int, default=None, help="override data.num_workers")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, dotted, value in YAML syntax (e.g. --set data.max_zoom_out=8, "
                        "--set model.quantizer=fsq --set model.fsq_levels=[8,8,8,8]); repeatable")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in OUT")
    add_progress_argument(p)
    p.set_defaults(func=run_train)


def apply_overrides(config: Any, items: list[str]) -> Any:
    """``["data.crop_size=64", "steps=10"]`` applied to a TrainConfig (values parsed as YAML scalars)."""
    import yaml

    from vqtok.models.vqgan import VQGANConfig
    from vqtok.training.config import LEGACY_KEYS, TrainConfig

    d = config.to_dict()
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key = key.strip()
        if key in LEGACY_KEYS:  # vqtok 0.1 names (bf16, ckpt_every), read until vqtok 0.3
            new, convert = LEGACY_KEYS[key]
            logger.warning("--set %s is deprecated (read until vqtok 0.3): use --set %s", key, new)
            key, text = new, str(convert(yaml.safe_load(text)))
        *parents, leaf = key.split(".")
        target = d
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise ValueError(f"--set {key}: {part!r} is not a config section")  # noqa: TRY004
            target = target[part]
        if leaf not in target and not (parents == ["model"] and leaf in {f.name for f in dataclasses.fields(VQGANConfig)}):
            # (VQGANConfig.to_dict leaves out quantizer / fsq_levels / lfq_bits while they are VQ's defaults)
            raise ValueError(f"--set {key}: unknown config key")
        target[leaf] = yaml.safe_load(text)
    return TrainConfig.from_dict(d)


# Keys a resumed run may change (how long, where, how often it reports); any other difference from the
# run folder's train_config.yaml would not continue the same run and is refused.
RESUME_MAY_CHANGE = frozenset({
    "steps", "device", "threads", "log_every", "val_every", "checkpoint_every", "image_every", "keep_checkpoints",
    "data.num_workers", "data.cache_images", "data.val_data", "data.val_size", "data.val_images",
    "loss.vgg_weights", "loss.lpips_weights",
})


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _check_resume(saved: TrainConfig, config: TrainConfig, origins: Mapping[str, str], out: str) -> None:
    """ValueError (one line, naming the option and both values) for a change that would not continue the run."""
    from vqtok._runtime import CONFIG_NAME

    old, new = _flatten(saved.to_dict()), _flatten(config.to_dict())
    for key in sorted(set(old) | set(new)):
        if key in RESUME_MAY_CHANGE or old.get(key) == new.get(key):
            continue
        option = (origins.get(key) or next((o for k, o in origins.items() if key.startswith(k + ".")), None)
                  or origins.get("*", "the options"))
        raise ValueError(
            f"{option} sets {key} to {new.get(key)!r}, but the run in {out} has {key}: {old.get(key)!r} "
            f"(its {CONFIG_NAME}); drop the option to continue that run, or give another --out for a new one"
        )


def run_train(args: argparse.Namespace) -> int:
    if args.init is not None and args.from_checkpoint is not None:
        raise ValueError("give --init (weights only) or --from-checkpoint (a whole training state), not both")
    try:
        return _train(args)
    except FileNotFoundError as err:
        if "from_checkpoint=" not in str(err):
            raise
        # the library names its parameter; the user gave the flag
        raise FileNotFoundError(str(err).replace("from_checkpoint=", "--from-checkpoint ")) from None


def _train(args: argparse.Namespace) -> int:
    from vqtok._runtime import CONFIG_NAME, CheckpointDir
    from vqtok.training.config import LEGACY_KEYS, TrainConfig
    from vqtok.training.data import training_sources
    from vqtok.training.trainer import Trainer, checkpoint_config

    if args.device is not None:  # an unusable --device first: it fails whatever the data
        device_from_args(args)
    training_sources(args.data)  # no data is said before weights, models or the run folder

    # the config of the run in OUT when it has a checkpoint to continue (vqtok 0.1 key names read)
    saved_path = Path(args.out) / CONFIG_NAME
    resumable = not args.no_resume and CheckpointDir(args.out).latest() is not None and saved_path.is_file()
    saved = TrainConfig.from_yaml(saved_path) if resumable else None
    if args.config:
        config = TrainConfig.from_yaml(args.config)
    elif saved is not None:  # a run folder knows its own config: re-running with --data/--out continues it
        config = saved
    elif args.from_checkpoint is not None:  # so does a checkpoint: the new run starts with its run's config
        config = checkpoint_config(args.from_checkpoint)
    else:
        config = TrainConfig()
    origins: dict[str, str] = {"*": f"--config {args.config}"} if args.config else {}
    top: dict[str, Any] = {}
    for name in ("steps", "batch_size", "lr", "device"):  # (a resumed run may change steps and device)
        if getattr(args, name) is not None:
            top[name] = getattr(args, name)
            origins[name] = f"--{name.replace('_', '-')} {top[name]}"
    data_changes = {k: v for k, v in (("val_data", args.val_data), ("num_workers", args.workers)) if v is not None}
    if data_changes:
        top["data"] = dataclasses.replace(config.data, **data_changes)
    if args.perceptual_weight is not None:
        top["loss"] = dataclasses.replace(config.loss, perceptual_weight=args.perceptual_weight)
        origins["loss.perceptual_weight"] = f"--perceptual-weight {args.perceptual_weight}"
    if args.init is not None:
        origins.setdefault("*", f"--init {args.init}")
    if top:
        config = dataclasses.replace(config, **top)
    if args.set:
        config = apply_overrides(config, args.set)
        for item in args.set:
            key = item.partition("=")[0].strip()
            origins[LEGACY_KEYS[key][0] if key in LEGACY_KEYS else key] = f"--set {item}"
    if saved is not None:
        _check_resume(saved, config, origins, args.out)
    trainer = Trainer(config, args.data, args.out, progress=not args.no_progress, resume=not args.no_resume,
                      init_weights=args.init, from_checkpoint=args.from_checkpoint)
    try:
        result = trainer.train()
    finally:
        trainer.close()
    summary: dict[str, Any] = {"out": str(result.out), "model": str(result.final), "steps": result.steps}
    if result.validation is not None:
        summary["validation"] = dataclasses.asdict(result.validation)
    if trainer.is_main:
        print(json.dumps(summary, indent=1))
    return 0
