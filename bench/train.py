"""Training step time: picogpt against a nanoGPT-shaped torch model, interleaved in one run.

picogpt's step is model.loss_and_grads + clip_grad_norm + AdamW.step (forward, backward,
clipping, update). The peer is written below: a small torch model built as nanoGPT builds
its GPT (torch Linear / LayerNorm / GELU(tanh) / fused scaled_dot_product_attention, the LM
head tied to wte, cross-entropy on the logits) with nanoGPT's optimizer (torch AdamW,
decay on matrices only, fused only on CUDA) and step (clip_grad_norm_ 1.0, zero_grad). Both
run in the same process (a fresh one for each shape) with the same BLAS / OpenMP threads
(--threads, default 1), one step each in turn; the table gives the median and range over the repeats and the ratio
peer time / picogpt time (>= 1.0: picogpt is at least as fast). On the CPU with torch installed,
the same run also times the step's matrix products alone in NumPy and in torch (`BLAS ratio`,
torch / NumPy): NumPy's OpenBLAS against torch's own BLAS, the ceiling of a step made of them;
and each side's step less its products (`rest`: norms, attention, GELU, loss, optimizer, glue).

    python bench/train.py                               # CPU: nanoGPT's three shapes
    python bench/train.py --shapes char --repeats 9     # one shape, more repeats
    python bench/train.py --device gpu                  # GPT-2 124M at 16 x 1024, float32 and TF32
    python bench/train.py --peer transformers           # transformers' GPT2LMHeadModel instead

Shapes: char = nanoGPT's CPU character recipe (4 layers, 4 heads, 128 wide, batch 12 x 64,
vocabulary 65; char-recipe: the same with nanoGPT's bias=False and exact GELU, on both sides); baby = its "baby GPT" (6/6/384, 12 x 256, vocabulary 65); gpt2 = GPT-2 124M
at 4 x 128; gpt2-1024 = GPT-2 124M at 16 x 1024 (the GPU shape).
"""

import argparse

from common import (THREADS, add_threads_arg, hf_peer, import_torch, interleaved, ms_per_step, projection_shapes, ratios,
                    report, run_alone, summary, torch_sync, xp_sync)
import numpy as np

from picogpt.backend import set_tf32, xp_for
from picogpt.config import GPT2Config
from picogpt.model import GPT2, init_params
from picogpt.optim import AdamW, clip_grad_norm

SHAPES = {  # name -> (config, batch, block)
    "char": (GPT2Config(n_layer=4, n_head=4, n_embd=128, n_ctx=64, vocab_size=65), 12, 64),
    # the same with nanoGPT's own model options, as its recipe runs: no biases, the exact GELU
    "char-recipe": (GPT2Config(n_layer=4, n_head=4, n_embd=128, n_ctx=64, vocab_size=65, bias=False, gelu="exact"), 12, 64),
    "baby": (GPT2Config(n_layer=6, n_head=6, n_embd=384, n_ctx=256, vocab_size=65), 12, 256),
    "gpt2": (GPT2Config(), 4, 128),
    "gpt2-1024": (GPT2Config(), 16, 1024),
}


def batch_of(config, batch, block, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, (batch, block)), rng.integers(0, config.vocab_size, (batch, block))


def picogpt_step(config, device, batch, block):
    xp = xp_for(device)
    model = GPT2(config, init_params(config, xp, np.float32, seed=0), device=device)
    opt = AdamW(model.params, weight_decay=0.1, betas=(0.9, 0.99))
    x, y = (xp.asarray(a) for a in batch_of(config, batch, block))

    def step():
        _, grads = model.loss_and_grads(x, y)
        clip_grad_norm(grads, 1.0)
        opt.step(model.params, grads, 1e-3)

    return step, xp_sync(xp)


def nanogpt_model(torch, config):
    """nanoGPT's GPT (model.py), without dropout: the modules and the forward it uses."""
    nn, F = torch.nn, torch.nn.functional
    C, H = config.n_embd, config.n_head

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C, bias=config.bias), nn.Linear(C, C, bias=config.bias)

        def forward(self, x):
            B, T, _ = x.size()
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # the fused kernel
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(C, bias=config.bias), Attention(), nn.LayerNorm(C, bias=config.bias)
            gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
            self.mlp = nn.Sequential(nn.Linear(C, 4 * C, bias=config.bias), gelu, nn.Linear(4 * C, C, bias=config.bias))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(config.vocab_size, C), nn.Embedding(config.n_ctx, C)
            self.h = nn.ModuleList(Block() for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(C, bias=config.bias)
            self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight                               # tied, as nanoGPT
            for name, p in self.named_parameters():                              # nanoGPT's init
                if p.dim() >= 2:
                    std = 0.02 / (2 * config.n_layer) ** 0.5 if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif not name.startswith("ln") and ".ln_" not in name:
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            T = idx.size(1)
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    return GPT()


def nanogpt_step(config, device, batch, block, tf32=False):
    torch = import_torch(THREADS)
    if torch is None or (device == "gpu" and not torch.cuda.is_available()):
        return None
    tdev = "cuda" if device == "gpu" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    model = nanogpt_model(torch, config).to(tdev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if tdev == "cuda" else {}                           # nanoGPT's configure_optimizers
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), **extra)
    x, y = (torch.tensor(a, device=tdev) for a in batch_of(config, batch, block))

    def step():
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, torch_sync(torch, tdev)


def transformers_step(config, device, batch, block, tf32=False):
    peer = hf_peer(config, device)
    if peer is None:
        return None
    torch, transformers, tdev, hf = peer
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf).to(tdev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = (torch.tensor(a, device=tdev) for a in batch_of(config, batch, block))

    def step():
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step, torch_sync(torch, tdev)


PEERS = {"nanogpt": nanogpt_step, "transformers": transformers_step}


def gemm_shapes(config, batch, block):
    """(rows, in, out) of every projection's product in one step, the tied LM head included."""
    return [(batch * block, i, o) for i, o in projection_shapes(config)]


def gemms(lib, config, batch, block):
    """The step's matrix products alone, in NumPy (lib None) or in torch (lib = torch): for each
    projection y = x W, dx = dy W^T, dW = x^T dy. The ratio torch / NumPy of their times is the
    ratio an all-matrix-product step would get: the ceiling that the BLAS sets on the row."""
    rng = np.random.default_rng(0)
    mats = []
    for n, i, o in gemm_shapes(config, batch, block):
        x, W, d = (rng.standard_normal(s, dtype=np.float32) for s in ((n, i), (i, o), (n, o)))
        mats.append((x, W, d) if lib is None else tuple(lib.from_numpy(a) for a in (x, W, d)))

    def step():
        for x, W, d in mats:
            x @ W, d @ W.T, x.T @ d

    return step, lambda: None


def measure(shape, args):
    """Time picogpt and the peer (and the products alone) at one shape, in this process: a row per mode."""
    gpu, rows = args.device == "gpu", []
    config, batch, block = SHAPES[shape]
    for mode in args.modes or (["float32", "tf32"] if gpu else ["float32"]):
        set_tf32(mode == "tf32")
        sides = {"picogpt": picogpt_step(config, args.device, batch, block)}
        peer = None if args.no_peer else PEERS[args.peer](config, args.device, batch, block, mode == "tf32")
        if peer is not None:
            sides[args.peer] = peer
        torch = None if gpu or args.no_peer else import_torch(args.threads)
        if torch is not None:                 # the BLAS ceiling: the same products, NumPy and torch
            sides["numpy gemms"], sides["torch gemms"] = gemms(None, config, batch, block), gemms(torch, config, batch, block)
        t = interleaved(sides, args.repeats)
        ours, theirs = t["picogpt"], t.get(args.peer)
        row = {"shape": f"{shape} {config.n_layer}L/{config.n_head}H/{config.n_embd} {batch}x{block}",
               "mode": mode, "picogpt step": summary(ours["wall"]),
               "picogpt tok/s": batch * block / float(np.median(ours["wall"])),
               "peer step": summary(theirs["wall"]) if theirs else None,
               "ratio": ratios(theirs["wall"], ours["wall"]) if theirs else None,
               "ratio (cpu time)": ratios(theirs["cpu"], ours["cpu"]) if theirs else None,
               "BLAS ratio": ratios(t["torch gemms"]["wall"], t["numpy gemms"]["wall"]) if "torch gemms" in t else None}
        if "torch gemms" in t and theirs:
            # the step split, roughly, into its products (timed alone, so in cache: a little
            # faster than within a step) and the rest (norms, attention, GELU, loss, optimizer)
            ms = {name: ms_per_step(t[name]["wall"]) for name in ("picogpt", args.peer, "numpy gemms", "torch gemms")}
            row["products alone ms (numpy | torch)"] = f"{ms['numpy gemms']:,.1f} | {ms['torch gemms']:,.1f}"
            row["rest ms (picogpt | peer)"] = (f"{ms['picogpt'] - ms['numpy gemms']:,.1f} | "
                                               f"{ms[args.peer] - ms['torch gemms']:,.1f}")
        rows.append(row)
        print(row, flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES),
                   help="default: char baby gpt2 on cpu, gpt2-1024 on gpu")
    p.add_argument("--modes", nargs="+", default=None, choices=["float32", "tf32"],
                   help="default: float32 on cpu; float32 and tf32 on gpu")
    p.add_argument("--peer", default="nanogpt", choices=list(PEERS))
    p.add_argument("--repeats", type=int, default=5, help="interleaved steps of each side (after one warm-up)")
    p.add_argument("--no-peer", action="store_true", help="skip torch even if installed")
    p.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    add_threads_arg(p)
    args = p.parse_args()
    gpu = args.device == "gpu"
    shapes = args.shapes or (["gpt2-1024"] if gpu else ["char", "baby", "gpt2"])
    if len(shapes) > 1:   # one process per shape (common.run_alone says why)
        rows = []
        for shape in shapes:
            rows += run_alone(__file__, ["--shapes", shape, "--device", args.device, "--peer", args.peer,
                                         "--repeats", args.repeats, "--threads", args.threads]
                              + (["--modes", *args.modes] if args.modes else []) + (["--no-peer"] if args.no_peer else []))
    else:
        rows = measure(shapes[0], args)
    report(f"training step (forward + backward + clip + AdamW), {args.device}, {args.threads} thread(s), "
           f"peer: {'none' if args.no_peer else args.peer}; median (min-max) of {args.repeats} interleaved "
           f"repeats; ratio = peer time / picogpt time (wall clock; and process CPU time); BLAS ratio = torch / NumPy "
           f"time of the step's matrix products alone (the ceiling the BLAS sets); rest = step - products alone "
           f"(medians)", rows, args.json)


if __name__ == "__main__":
    main()
