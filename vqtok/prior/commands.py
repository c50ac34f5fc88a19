"""CLI subcommands of the prior: ``vqtok train-prior`` and ``vqtok sample``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from vqtok._runtime import env_int
from vqtok.commands import add_device_argument, add_out_argument, add_progress_argument, device_from_args, parse_grid, positive_int

__all__ = ["add_commands", "parse_grid"]


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-prior",
        help="train the transformer prior on token shards",
        description="Train a GPT prior over codebook ids from `vqtok pretokenize` shards.",
    )
    p.add_argument("--tokens", help="token shards, e.g. 'tokens/train-{000000..000099}.tar' (or set in --config)")
    add_out_argument(p, "run folder (model, checkpoints/, log.jsonl)")
    p.add_argument("--config", help="PriorTrainConfig as YAML or JSON")
    p.add_argument("--steps", type=positive_int, help="total optimizer steps")
    p.add_argument("--batch-size", type=positive_int, help="global batch size per optimizer step")
    p.add_argument("--grad-accum", type=positive_int, help="micro-steps per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--val-tokens", help="validation token shards (default: hold out val_fraction)")
    p.add_argument("--seed", type=int, help="seed of init, data order and label dropout")
    add_device_argument(p, default=None, default_help="the config's device, auto")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="autocast precision")
    p.add_argument("--stop-after", type=int, help="stop with a checkpoint after this step (time-sliced jobs; schedule unchanged)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in OUT")
    add_progress_argument(p)
    p.set_defaults(func=_train_prior)

    s = subparsers.add_parser(
        "sample",
        help="sample images from a prior + tokenizer",
        description="Sample token grids from a prior, decode them with the tokenizer, write an image grid.",
    )
    s.add_argument("--prior", required=True, help="prior folder or Hub repo id")
    s.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub repo id (default: the built-in tokenizer)")
    add_out_argument(s, "output image (png/jpg)")
    s.add_argument("--n", type=positive_int, default=16, help="number of samples (default 16)")
    s.add_argument("--label", type=int, help="class label (class-conditional priors)")
    s.add_argument("--grid", type=parse_grid, help="token grid HxW (default: the trained grid; larger = sliding window)")
    s.add_argument("--window", type=parse_grid, help="sliding-window shape HxW (default: the trained grid)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (needs --label)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=positive_int, default=16, help="samples generated at once")
    s.add_argument("--nrow", type=int, help="images per row of the grid (default: ~sqrt(n))")
    s.add_argument("--save-ids", help="also write the sampled ids (n, h, w) to this .npy file")
    add_device_argument(s)
    add_progress_argument(s)
    s.set_defaults(func=_sample)


def _say_resume(out: Path) -> None:
    """``vqtok train-prior: resuming from step N of OUT`` on stderr when ``out`` holds a checkpoint."""
    from vqtok._runtime import CheckpointDir
    from vqtok.prior.train import STATE_NAME

    latest = CheckpointDir(out).latest()
    if latest is None:
        return
    try:
        step = int(json.loads((latest / STATE_NAME).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        step = None
    at = f"step {step}" if step is not None else latest.name
    print(f"vqtok train-prior: resuming from {at} of {out} (--no-resume refuses, another --out starts anew)", file=sys.stderr)


def _train_prior(args: argparse.Namespace) -> int:
    import dataclasses

    from vqtok.prior.train import PriorTrainConfig, load_train_config, train

    cfg = load_train_config(args.config) if args.config else PriorTrainConfig()
    names = ("tokens", "steps", "batch_size", "grad_accum", "lr", "val_tokens", "seed", "device", "precision")
    cfg = dataclasses.replace(cfg, **{k: getattr(args, k) for k in names if getattr(args, k) is not None})  # the flags given
    if not cfg.tokens:
        raise ValueError("give the token shards with --tokens (or `tokens:` in --config)")
    if not args.no_resume and env_int("RANK", 0) == 0:
        _say_resume(Path(args.out))
    result = train(cfg, out=args.out, resume=not args.no_resume, progress=not args.no_progress, stop_after=args.stop_after)
    if env_int("RANK", 0) != 0:  # under torchrun only rank 0 reports
        return 0
    val = f"{result.val_bits_per_token:.4f}" if result.val_bits_per_token is not None else "n/a"
    loss_bits = result.train_loss / math.log(2)  # the training loss is a mean NLL in nats
    print(f"trained {result.steps} steps: train {loss_bits:.4f} bits/token, val {val} bits/token -> {result.out}")
    return 0


def _image_grid(images: list[Any], *, nrow: int) -> Any:
    """``images`` in rows of ``nrow`` on white, 2 pixels apart and around."""
    from PIL import Image

    pad = 2
    w, h = images[0].size
    rows = math.ceil(len(images) / nrow)
    canvas = Image.new("RGB", (nrow * w + (nrow + 1) * pad, rows * h + (rows + 1) * pad), (255, 255, 255))
    for k, im in enumerate(images):
        r, c = divmod(k, nrow)
        canvas.paste(im.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from vqtok.prior.gpt import GPT
    from vqtok.tokenizer import Tokenizer

    device = device_from_args(args)
    prior = GPT.from_pretrained(args.prior, device=device)
    tok = Tokenizer.load(args.tokenizer, device=device, batch_size=args.batch_size)  # decodes batch_size ids at a time
    if int(tok.codebook_size) != prior.config.vocab_size:
        raise ValueError(f"the prior models {prior.config.vocab_size} codes but the tokenizer has {tok.codebook_size}; "
                         "they were not trained together")
    if args.label is not None and not 0 <= args.label < prior.config.n_classes:
        raise ValueError(f"--label must be in [0, {prior.config.n_classes}) for this prior")
    if args.cfg_scale != 1.0 and args.label is None:
        raise ValueError("--cfg-scale needs --label")
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.cat([  # (n, h, w)
        prior.generate(min(args.batch_size, args.n - start), labels=args.label, grid=args.grid, window=args.window,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale,
                       generator=gen, progress=not args.no_progress)
        for start in range(0, args.n, args.batch_size)
    ])
    if tok.layout().kind == "sequence":  # the prior samples a sequence as a 1 x n grid
        ids = ids.reshape(ids.shape[0], -1)
    if args.save_ids:
        np.save(args.save_ids, ids.cpu().numpy())
    images = tok.decode(ids, output="pil")  # a list: ids have a batch axis
    nrow = args.nrow or math.ceil(math.sqrt(args.n))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _image_grid(images, nrow=nrow).save(out)
    print(f"wrote {args.n} samples ({'x'.join(map(str, ids.shape[1:]))} tokens) to {out}")
    return 0
