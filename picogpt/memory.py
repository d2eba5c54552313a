"""How much memory a batch needs, and how much there is: a flag too big for the machine is
refused in one sentence before the work starts, instead of growing until the system kills it.

The estimates count the arrays that dominate, per token of a (B, T) batch with width C, H
heads and L layers (itemsize bytes per number):

    a block's forward    about 22 C numbers (ln, qkv, projections, the 4C-wide MLP twice)
                         + H T attention weights (and as many scores)
    training             keeps every block's forward for the backward: L times that
    evaluation           keeps one block at a time
    generation           the KV cache, 2 L C per position, plus (B, V) logits and the sampling
                         scratch beside them

They are meant to be right within a factor of about two, and are used only to refuse what
clearly cannot fit; a request that passes can still be tight.
"""

import os

from .errors import PicoGPTError

LM_HEAD_CHUNK_BYTES = 1 << 27   # the fused LM-head loss works on ~128 MB of logits at a time


def _block_numbers(config, T):
    """Numbers one block's forward holds per token of a window of T tokens."""
    return 22 * config.n_embd + 2 * config.n_head * T


def training_bytes(config, batch, T, itemsize=4):
    """Activations kept for the backward of a (batch, T) micro-batch, plus the backward's scratch."""
    per_token = (config.n_layer + 2) * _block_numbers(config, T)
    return batch * T * per_token * itemsize + LM_HEAD_CHUNK_BYTES


def inference_bytes(config, batch, T, itemsize=4):
    """Peak memory of a loss-only forward of (batch, T) tokens: one block at a time."""
    return 2 * batch * T * _block_numbers(config, T) * itemsize + LM_HEAD_CHUNK_BYTES


def generation_bytes(config, batch, prompt_len, max_len, itemsize=4):
    """The KV cache for `max_len` positions, the prompt's forward, and float32 logits with
    about three copies of scratch for sampling (sorting, filtering, probabilities)."""
    cache = 2 * config.n_layer * batch * max_len * config.n_embd * itemsize
    prefill = 2 * batch * prompt_len * _block_numbers(config, max_len) * itemsize
    return cache + prefill + 4 * batch * config.vocab_size * 4


def available_bytes(device="cpu"):
    """Memory free for new arrays on `device` ('cpu' or 'gpu'), or None when it cannot be told."""
    if device == "gpu":
        try:
            import cupy

            free = cupy.cuda.runtime.memGetInfo()[0]
            return free + cupy.get_default_memory_pool().free_bytes()  # the pool's cached blocks are reusable
        except Exception:  # no CuPy, no device, or a stand-in without these calls
            return None
    return _host_available()


def _host_available():
    """MemAvailable from /proc/meminfo, lowered to what a cgroup (a container's limit) leaves."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            room = int(limit) - used
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free


def check_fits(nbytes, device, what, advice):
    """Refuse, in one sentence, a request that needs more memory than `device` has free.

    what: the request in the user's words ("16 samples at once"); advice: what to change."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        place = "GPU" if device == "gpu" else "machine"
        raise PicoGPTError(f"{what} would need about {_gb(nbytes)} of memory, but the {place} has {_gb(free)} free: "
                           f"{advice}.")


def _gb(n):
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.0f} MB"
