"""Training throughput: tokens per second of one full step (forward + backward + AdamW update).

picogpt's step is model.loss_and_grads + clip_grad_norm + AdamW.step; the peer (when torch and
transformers are installed) is GPT2LMHeadModel in eager PyTorch: forward with labels, backward,
clip_grad_norm_, torch.optim.AdamW — same shapes, same machine, same run.

    python bench/train.py                        # CPU: small shapes (gpt2-tiny, 8 x 256)
    python bench/train.py --device gpu           # GPU: GPT-2 124M at 16 x 1024, float32 and TF32
    python bench/train.py --device gpu --model gpt2 --batch 16 --block 1024 --modes float32 tf32

Targets (from the issue): >= 0.9x torch in each mode on the GPU (an H100 measured 46.7k tokens/s
float32 and 96k TF32 for transformers eager).
"""

import argparse

import numpy as np
from common import hf_peer, report, time_it, torch_sync, xp_sync

from picogpt.backend import set_tf32, xp_for
from picogpt.config import get_config
from picogpt.model import GPT2, init_params
from picogpt.optim import AdamW, clip_grad_norm


def picogpt_tokens_per_s(config, device, batch, block, repeats):
    xp = xp_for(device)
    model = GPT2(config, init_params(config, xp, np.float32, seed=0), device=device)
    opt = AdamW(model.params)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.integers(0, config.vocab_size, (batch, block)))
    y = xp.asarray(rng.integers(0, config.vocab_size, (batch, block)))

    def step():
        _, grads = model.loss_and_grads(x, y)
        clip_grad_norm(grads, 1.0)
        opt.step(model.params, grads, 1e-4)

    return batch * block / time_it(step, xp_sync(xp), repeats)


def torch_tokens_per_s(config, device, batch, block, repeats, tf32):
    peer = hf_peer(config, device)
    if peer is None:
        return None
    torch, transformers, tdev, hf = peer
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf).to(tdev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.integers(0, config.vocab_size, (batch, block)), device=tdev)
    y = torch.tensor(rng.integers(0, config.vocab_size, (batch, block)), device=tdev)

    def step():
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return batch * block / time_it(step, torch_sync(torch, tdev), repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--model", default=None, help="config preset, random weights (default: gpt2-tiny on cpu, gpt2 on gpu)")
    p.add_argument("--batch", type=int, default=None, help="default: 8 on cpu, 16 on gpu")
    p.add_argument("--block", type=int, default=None, help="default: 256 on cpu, 1024 on gpu")
    p.add_argument("--modes", nargs="+", default=None, choices=["float32", "tf32"],
                   help="default: float32 on cpu; float32 and tf32 on gpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-peer", action="store_true", help="skip torch even if installed")
    p.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    args = p.parse_args()
    gpu = args.device == "gpu"
    name = args.model or ("gpt2" if gpu else "gpt2-tiny")
    batch, block = args.batch or (16 if gpu else 8), args.block or (1024 if gpu else 256)
    config = get_config(name, n_ctx=max(block, get_config(name).n_ctx))
    rows = []
    for mode in args.modes or (["float32", "tf32"] if gpu else ["float32"]):
        set_tf32(mode == "tf32")
        ours = picogpt_tokens_per_s(config, args.device, batch, block, args.repeats)
        peer = None if args.no_peer else torch_tokens_per_s(config, args.device, batch, block, args.repeats, mode == "tf32")
        rows.append({"device": args.device, "mode": mode, "shape": f"{batch}x{block}", "picogpt tok/s": ours,
                     "torch tok/s": peer, "ratio": None if not peer else ours / peer})
        print(rows[-1], flush=True)
    report(f"training step: {name}, forward + backward + AdamW", rows, args.json)


if __name__ == "__main__":
    main()
