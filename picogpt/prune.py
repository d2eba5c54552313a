"""Pruning: zero the smallest weights (unstructured), or remove whole attention heads (structured).

Magnitude pruning. The weights of a block's four projections (c_attn, attn c_proj, c_fc, mlp
c_proj) whose |w| is smallest are set to zero, a fraction `sparsity` of them, either within each
matrix ("layer": every matrix loses the same share) or across all of them at once ("global": one
threshold, so matrices with many small weights lose more). Embeddings and layer norms are kept.
The pattern is a boolean mask per matrix, saved beside the model as prune_masks.safetensors;
training from that folder keeps it (masked gradients, and the weights masked again after each
AdamW update), so pruned weights stay exactly zero through fine-tuning. The file does not get
smaller (zeros are stored like any other number); a sparse format or sparse kernels would be
needed for that.

Head pruning (Michel et al., 2019). Every head gets a gate (picogpt/gates.py) fixed at 1; the
importance of a head is |dL/dgate| summed over a few batches, normalised per layer (the paper's
l2 normalisation, so that layers with large gradients do not lose all their heads). The least
important heads are then removed for real: their q, k, v columns of c_attn and their rows of
c_proj go, so the matrices shrink, the file is smaller and every token costs less. The config
records what went as transformers' `pruned_heads`, so transformers loads the folder too. Every
layer keeps at least one head; head_dim does not change.

    python -m picogpt.prune --model shakespeare --sparsity 0.5 --out out/sparse
    python -m picogpt.prune --model shakespeare --heads 0.3 --data data/shakespeare --out out/heads
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from . import data as D
from . import safetensors
from .backend import asnumpy, get_array_module
from .cli import run_command
from .errors import PicoGPTError
from .files import make_folder
from .gates import gate_name
from .model import GPT2
from .weights import load_model, save_model

MASKS_FILE = "prune_masks.safetensors"
PROJECTIONS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def prunable(config):
    """The weight matrices magnitude pruning acts on: each block's four projections."""
    return [f"h.{i}.{p}.weight" for i in range(config.n_layer) for p in PROJECTIONS]


def check_fraction(value, what):
    if not 0.0 <= value < 1.0:   # also refuses NaN
        raise PicoGPTError(f"{what} must be at least 0 and below 1, got {value}.")
    return float(value)


# --- unstructured: magnitude ------------------------------------------------------------------

def magnitude_masks(params, names, sparsity, scope="layer"):
    """{name: bool mask, True = kept} zeroing the `sparsity` fraction of smallest |w|.

    scope "layer": floor(sparsity * size) entries of each matrix; "global": floor(sparsity *
    total) entries of all of them together, ranked by one threshold. Ties are broken by a
    stable sort, so exactly that many entries go.
    """
    check_fraction(sparsity, "sparsity")
    if scope not in ("layer", "global"):
        raise PicoGPTError(f"the pruning scope must be layer or global, got {scope!r}.")
    mags = {k: np.abs(asnumpy(params[k])).ravel() for k in names}
    if scope == "layer":
        groups = [[k] for k in names]
    else:
        groups = [list(names)]
    masks = {}
    for group in groups:
        flat = np.concatenate([mags[k] for k in group])
        drop = int(sparsity * flat.size)
        keep = np.ones(flat.size, dtype=bool)
        keep[np.argsort(flat, kind="stable")[:drop]] = False
        start = 0
        for k in group:
            n = mags[k].size
            xp = get_array_module(params[k])
            masks[k] = xp.asarray(keep[start:start + n].reshape(params[k].shape))
            start += n
    return masks


def apply_masks(arrays, masks):
    """arrays[k] *= masks[k] in place, for every masked k present (weights or their gradients)."""
    for k, m in masks.items():
        if k in arrays:
            arrays[k] *= m


def sparsity_of(params, names):
    """The fraction of exact zeros among `names`."""
    zeros = sum(int((asnumpy(params[k]) == 0).sum()) for k in names)
    return zeros / sum(int(params[k].size) for k in names)


def save_masks(masks, folder):
    """masks -> folder/prune_masks.safetensors (uint8 0/1; safetensors has no bool here)."""
    safetensors.save({k: asnumpy(m).astype(np.uint8) for k, m in masks.items()}, Path(folder) / MASKS_FILE)


def load_masks(path, params):
    """Masks from a prune_masks.safetensors (or a folder holding one), on the params' device,
    checked against the params' shapes."""
    path = Path(path)
    if path.is_dir():
        path = path / MASKS_FILE
    if not path.is_file():
        raise PicoGPTError(f"there is no pruning mask file at {path}.")
    masks = {}
    for k, m in safetensors.load(path).items():
        if k not in params or tuple(params[k].shape) != tuple(m.shape):
            raise PicoGPTError(f"{path}: the mask {k!r} {tuple(m.shape)} does not fit this model's parameters.")
        masks[k] = get_array_module(params[k]).asarray(np.asarray(m) != 0)
    return masks


# --- structured: attention heads ---------------------------------------------------------------

def add_gates(model, value=1.0):
    """Put a gate of `value` on every head of `model` (in place); returns their names."""
    xp = model.xp
    names = []
    for i in range(model.config.n_layer):
        model.params[gate_name(i)] = xp.full((model.config.heads(i),), value, dtype=model.dtype)
        names.append(gate_name(i))
    return names


def remove_gates(model):
    for i in range(model.config.n_layer):
        model.params.pop(gate_name(i), None)


def head_importance(model, batches):
    """|dL/dgate| of every head, summed over `batches` ((x, y) pairs) -> list of (H_i,) arrays.

    Only the gates' gradients are asked for: the weights' dW is skipped (`wanted`)."""
    names = add_gates(model)
    try:
        total = [np.zeros(model.config.heads(i)) for i in range(model.config.n_layer)]
        for x, y in batches:
            _, grads = model.loss_and_grads(x, y, wanted=set(names))
            for i, k in enumerate(names):
                total[i] += np.abs(asnumpy(grads[k]).astype(np.float64))
    finally:
        remove_gates(model)
    return total


def heads_to_prune(importance, fraction):
    """The heads to remove, {layer: [current head indices]}: the `fraction` of all heads with
    the lowest importance after normalising each layer's scores to unit l2 norm, at least one
    head left in every layer."""
    check_fraction(fraction, "the fraction of heads to prune")
    scores = [s / (np.linalg.norm(s) + 1e-20) for s in importance]
    ranked = sorted((float(s[h]), i, h) for i, s in enumerate(scores) for h in range(len(s)))
    left = [len(s) for s in scores]
    todo, chosen = int(fraction * sum(left)), {}
    for _, i, h in ranked:
        if todo == 0:
            break
        if left[i] > 1:
            chosen.setdefault(i, []).append(h)
            left[i] -= 1
            todo -= 1
    return {i: sorted(hs) for i, hs in chosen.items()}


def remove_heads(model, heads):
    """A new GPT2 without the heads {layer: [current head indices]}: c_attn loses those heads'
    q, k and v columns (and bias entries), attn.c_proj their rows; the config's pruned_heads
    records them by their original index (a model pruned twice keeps counting from the first)."""
    config, D = model.config, model.config.head_dim
    params = dict(model.params)
    before = config.pruned_heads or ((),) * config.n_layer
    pruned = []
    for i in range(config.n_layer):
        H = config.heads(i)
        original = [h for h in range(config.n_head) if h not in before[i]]   # current index -> original
        gone = sorted(set(heads.get(i, ())))
        if any(not 0 <= h < H for h in gone) or len(gone) >= H:
            raise PicoGPTError(f"layer {i} has {H} heads: cannot remove {gone} (at least one must stay).")
        pruned.append(tuple(sorted(set(before[i]) | {original[h] for h in gone})))
        keep = np.array([h for h in range(H) if h not in gone], dtype=np.int64)
        chans = (keep[:, None] * D + np.arange(D)).ravel()                      # this layer's kept channels
        cols = np.concatenate([chans + j * H * D for j in range(3)])             # in q, in k, in v
        p = f"h.{i}.attn."
        xp = get_array_module(params[p + "c_attn.weight"])
        cols, chans = xp.asarray(cols), xp.asarray(chans)
        params[p + "c_attn.weight"] = params[p + "c_attn.weight"][:, cols]
        if p + "c_attn.bias" in params:
            params[p + "c_attn.bias"] = params[p + "c_attn.bias"][cols]
        params[p + "c_proj.weight"] = params[p + "c_proj.weight"][chans]
    new = config.replace(pruned_heads=tuple(pruned))
    return GPT2(new, params, device=model.device, tokenizer=model.tokenizer)


# --- the command ----------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m picogpt.prune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prune a model: zero its smallest weights (--sparsity) or remove its least important "
                    "attention heads (--heads), and write the result as a model folder.",
        epilog="examples:\n"
               "  python -m picogpt.prune --model shakespeare --sparsity 0.5 --out out/sparse50\n"
               "  python -m picogpt.prune --model shakespeare --heads 0.3 --data data/shakespeare --out out/heads30\n"
               "  # fine-tune the sparse model: its masks (out/sparse50/prune_masks.safetensors) are kept\n"
               "  python -m picogpt.train --data data/shakespeare --init out/sparse50 --steps 100 --out out/sparse50-ft")
    p.add_argument("--model", default="shakespeare", help="a model name or folder (default: the bundled shakespeare)")
    p.add_argument("--out", required=True, help="folder for the pruned model")
    p.add_argument("--sparsity", type=float, help="magnitude pruning: the fraction of projection weights set to zero")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="magnitude pruning: the same fraction in every matrix (layer, default) or one threshold (global)")
    p.add_argument("--heads", type=float, help="head pruning: the fraction of attention heads removed")
    p.add_argument("--data", help="head pruning: a text file or data folder whose batches rank the heads")
    p.add_argument("--batches", type=int, default=8, help="head pruning: batches for the importance (default 8)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    p.add_argument("--block-size", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--seed", type=int, default=0, help="which batches are drawn (default 0)")
    return p


def importance_batches(data, count, batch_size, block_size, seed=0):
    """`count` random (x, y) training batches of `data` (a text file or data folder)."""
    train_ids, _ = D.load_dataset(data)
    D.check_length(train_ids, block_size, "train")
    rng = np.random.default_rng([seed, 3])
    return [D.get_batch(train_ids, batch_size, block_size, rng) for _ in range(count)]


def _prune_command(args):
    if (args.sparsity is None) == (args.heads is None):
        raise PicoGPTError("give one of --sparsity (zero the smallest weights) or --heads (remove attention heads).")
    model = load_model(args.model)
    make_folder(args.out, "output folder (--out)")
    if args.sparsity is not None:
        names = prunable(model.config)
        masks = magnitude_masks(model.params, names, args.sparsity, args.scope)
        apply_masks(model.params, masks)
        save_model(model, args.out)
        save_masks(masks, args.out)
        print(f"{sparsity_of(model.params, names):.1%} of the projection weights are zero ({args.scope}); "
              f"model and {MASKS_FILE} in {args.out}/")
        return 0
    check_fraction(args.heads, "--heads")
    if not args.data:
        raise PicoGPTError("--heads ranks the heads by the gradient of their gates on some text: give --data.")
    for flag in ("batches", "batch_size", "block_size"):
        if getattr(args, flag) < 1:
            raise PicoGPTError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}.")
    block = min(args.block_size, model.config.n_ctx)
    importance = head_importance(model, importance_batches(args.data, args.batches, args.batch_size, block, args.seed))
    chosen = heads_to_prune(importance, args.heads)
    pruned = remove_heads(model, chosen)
    save_model(pruned, args.out)
    total = sum(model.config.heads(i) for i in range(model.config.n_layer))
    print(f"removed {sum(map(len, chosen.values()))} of {total} heads "
          f"({pruned.num_params():,} parameters, was {model.num_params():,}); model in {args.out}/")
    return 0


def main(argv=None):
    return run_command(_prune_command, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
