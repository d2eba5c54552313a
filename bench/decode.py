"""Decode speed: new tokens per second of greedy generation with a KV cache.

GPT-2 124M shapes with random weights (no download needed), a 16-token prompt, 128 new tokens,
batch 1 and batch 16, on the CPU and (where CuPy sees one) the GPU. When torch and transformers
are installed, GPT2LMHeadModel.generate runs on the same machine in the same run (eager PyTorch,
its default attention) and the ratio picogpt / transformers is printed.

    python bench/decode.py                     # cpu, and gpu if available
    python bench/decode.py --device gpu --batch 1 16 --json results.jsonl

Goals picogpt sets itself: CPU batch 1 >= 1.5x transformers; GPU batch 1 >= 3x transformers eager.
"""

import argparse

import numpy as np
from common import gpu_available, hf_peer, report, time_it, torch_sync, xp_sync

from picogpt.backend import set_tf32, xp_for
from picogpt.config import get_config
from picogpt.generate import generate
from picogpt.model import GPT2, init_params


def picogpt_tokens_per_s(config, device, batch, prompt_len, new, repeats, dtype):
    xp = xp_for(device)
    model = GPT2(config, init_params(config, xp, np.dtype(dtype), seed=0), device=device)
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, (batch, prompt_len))
    run = lambda: generate(model, prompt, new, temperature=0.0, stop_at_eot=False)  # noqa: E731
    return batch * new / time_it(run, xp_sync(xp), repeats)


def transformers_tokens_per_s(config, device, batch, prompt_len, new, repeats, dtype):
    peer = hf_peer(config, device)
    if peer is None:
        return None
    torch, transformers, tdev, hf_config = peer
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(hf_config).to(tdev, getattr(torch, dtype)).eval()
    prompt = torch.tensor(np.random.default_rng(0).integers(0, config.vocab_size, (batch, prompt_len)), device=tdev)
    mask = torch.ones_like(prompt)

    def run():
        with torch.no_grad():
            model.generate(prompt, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=0, eos_token_id=None)

    return batch * new / time_it(run, torch_sync(torch, tdev), repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", nargs="+", default=None, choices=["cpu", "gpu"], help="default: cpu, and gpu if available")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="gpt2", help="config preset (random weights), default gpt2 (124M)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="float16: GPU only")
    p.add_argument("--no-peer", action="store_true", help="skip transformers even if installed")
    p.add_argument("--json", default=None, help="append the results to this JSON-lines file")
    args = p.parse_args()
    devices = args.device or (["cpu", "gpu"] if gpu_available() else ["cpu"])
    config = get_config(args.model)
    set_tf32(False)
    rows = []
    for device in devices:
        for batch in args.batch:
            ours = picogpt_tokens_per_s(config, device, batch, args.prompt_len, args.new_tokens, args.repeats, args.dtype)
            peer = None if args.no_peer else transformers_tokens_per_s(
                config, device, batch, args.prompt_len, args.new_tokens, args.repeats, args.dtype)
            rows.append({"device": device, "dtype": args.dtype, "batch": batch, "picogpt tok/s": ours,
                         "transformers tok/s": peer, "ratio": None if not peer else ours / peer})
            print(rows[-1], flush=True)
    report(f"decode: {args.model} shapes, random weights, prompt {args.prompt_len}, {args.new_tokens} new tokens, greedy",
           rows, args.json)


if __name__ == "__main__":
    main()
