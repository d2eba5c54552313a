"""Data parallelism: N processes train one model exactly as one process would with N times the batch.

    mpiexec -n 4 python -m picogpt.train --data DATA --batch-size 8    # = one process with --batch-size 32

Each process (a *rank*) holds the whole model. A training step goes:

1. The step's global batch (N x batch-size rows per micro-batch) is drawn from the step's seed,
   the same on every rank; rank r keeps rows r*B .. r*B+B-1. Dropout masks are drawn per
   global row (`RowStreams`), so they do not depend on which rank holds the row.
2. Forward and backward on its rows. Each rank adds count x gradient (count = its target tokens)
   into ONE flat buffer that holds every trainable parameter's gradient end to end (`FlatLayout`).
3. One in-place Allreduce (sum) of that buffer, then a division by the global token count: every
   rank now holds the gradient of the whole batch, averaged per token (so uneven `ignore_index`
   counts are weighted right), and takes the same AdamW step; the parameters stay identical.

ZeRO stage 1 (`--zero 1`, `ZeroAdamW`) replaces step 3: a reduce-scatter hands rank r the summed
gradient of its 1/N slice of the flat buffer only; rank r keeps AdamW's moments for that slice
only (1/N of the optimizer's memory), updates that slice of the parameters, and an all-gather
sends every slice to every rank. Each number goes through the same arithmetic as without ZeRO.

Bytes moved: a ring all-reduce of P numbers sends 2 (N-1)/N x P numbers per rank (a
reduce-scatter, then an all-gather, each (N-1)/N x P); ZeRO-1's reduce-scatter + all-gather
moves the same amount (notebooks/14_parallel.ipynb writes the ring out).

The bytes travel by MPI (mpi4py) between host arrays; between GPU arrays by NCCL (through CuPy,
its unique id broadcast over MPI) or, where NCCL is missing, staged through the host: copied
to host memory, reduced by MPI, copied back.

A failure is loud, never a hang: an exception on any rank prints that rank's message and calls
MPI Abort, which ends every rank within seconds (`loud_failure`). Ranks that disagree on the
config, the data or picogpt's source refuse to start, naming the difference (`check_agreement`).

One process started without mpiexec needs no mpi4py: `world()` is then a World of one whose
collectives do nothing.
"""

import contextlib
import hashlib
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .backend import asnumpy, get_array_module, make_rng, xp_for
from .errors import PicoGPTError
from .optim import adamw_update, decays, sum_of_squares

# Variables that MPI launchers (MPICH/Hydra, Open MPI, PMIx, Intel MPI) set in every rank.
LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALRANKID")

INSTALL_MPI = 'pip install ".[mpi]" (mpi4py and the MPICH wheel: nothing else to install)'


class AllRanksError(PicoGPTError):
    """A mistake every rank finds identically (after comparing notes): rank 0 alone reports it
    and every rank exits with status 2, without an abort."""


def launched_by_mpi(environ=None):
    """True when this process was started by mpiexec/mpirun (their variables are set)."""
    environ = os.environ if environ is None else environ
    return any(v in environ for v in LAUNCHER_VARS)


def world():
    """The World this process belongs to: every rank of mpiexec's job, or one process alone."""
    if not launched_by_mpi():
        return World()
    try:  # here, not at the top: importing mpi4py starts MPI, which a lone process must not need
        from mpi4py import MPI
    except ImportError:
        raise PicoGPTError(f"this was started by mpiexec, but mpi4py is not installed: {INSTALL_MPI}.") from None
    return World(MPI)


class World:
    """rank, size and local rank (rank among the processes of this machine), and the collectives.

    Every collective takes NumPy or CuPy arrays. With one process they do nothing (the sum over
    one rank is the array itself). Sums are in place where the data allows it: no extra copy of
    the gradient buffer on the host path.
    """

    def __init__(self, mpi=None):
        self.mpi = mpi               # the mpi4py.MPI module, or None for one process alone
        self.comm = None if mpi is None else mpi.COMM_WORLD
        self.nccl = None             # a NcclCommunicator once use_gpu() found NCCL
        self.gpu = False
        if mpi is None:
            self.rank, self.size, self.local_rank = 0, 1, 0
        else:
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
            # the ranks that share this machine's memory are the ones that share its GPUs
            self.local_rank = self.comm.Split_type(mpi.COMM_TYPE_SHARED).Get_rank()

    @property
    def is_root(self):
        return self.rank == 0

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, transport={self.transport!r})"

    @property
    def transport(self):
        """How gradients travel: 'none' (one process), 'mpi' (host arrays), 'nccl' (GPU), or
        'mpi via host' (GPU arrays staged through host memory)."""
        if self.size == 1:
            return "none"
        return "nccl" if self.nccl is not None else ("mpi via host" if self.gpu else "mpi")

    # --- GPU ranks -------------------------------------------------------------------------
    def use_gpu(self):
        """One GPU per rank, chosen by the local rank; NCCL between them when it loads.

        With more ranks on a machine than it has GPUs, ranks share them round-robin (slower, but
        it runs: how the tests run several ranks on one simulated device). NCCL refuses two
        ranks on one GPU, and every rank must choose the same transport, so the ranks agree
        first: NCCL only if it loads on every rank and no GPU is shared; otherwise the
        collectives stage GPU arrays through the host. Returns a sentence saying which.
        """
        cupy = xp_for("gpu")
        self.gpu = True
        n = cupy.cuda.runtime.getDeviceCount()
        self.device_id = self.local_rank % n
        device = getattr(cupy.cuda, "Device", None)   # (the simulated device has none to choose)
        if device is not None:
            device(self.device_id).use()
        if self.size > 1:
            nccl = _nccl_module()
            if self.comm.allreduce(int(nccl is not None and self.local_rank < n), op=self.mpi.MIN):
                self._nccl_lib = nccl
                uid = nccl.get_unique_id() if self.is_root else None
                self.nccl = nccl.NcclCommunicator(self.size, self.comm.bcast(uid, root=0), self.rank)
        shared = " (shared: more ranks than GPUs on this machine)" if self.local_rank >= n else ""
        return f"rank {self.rank}: GPU {self.device_id}{shared}, gradients by {self.transport}"

    # --- collectives -----------------------------------------------------------------------
    def allreduce(self, buf):
        """buf <- the sum of every rank's buf, in place. Returns buf."""
        if self.size == 1:
            return buf
        if get_array_module(buf) is np:
            self.comm.Allreduce(self.mpi.IN_PLACE, buf, op=self.mpi.SUM)
        elif self.nccl is not None:
            self._nccl_call("allReduce", buf, buf, buf.size, op=True)
        else:
            buf[...] = get_array_module(buf).asarray(self.allreduce(asnumpy(buf)))  # staged through the host
        return buf

    def reduce_scatter(self, buf):
        """The sum over ranks of this rank's 1/size slice of buf (len(buf) divisible by size)."""
        if self.size == 1:
            return buf.copy()
        n = buf.size // self.size
        xp = get_array_module(buf)
        if xp is np:
            part = np.empty(n, dtype=buf.dtype)
            self.comm.Reduce_scatter_block(buf, part, op=self.mpi.SUM)
        elif self.nccl is not None:
            part = xp.empty(n, dtype=buf.dtype)
            self._nccl_call("reduceScatter", buf, part, n, op=True)
        else:
            part = xp.asarray(self.reduce_scatter(asnumpy(buf)))
        return part

    def allgather(self, part, out):
        """out <- every rank's part, end to end in rank order (len(out) = size x len(part))."""
        if self.size == 1:
            out[...] = part
        elif get_array_module(out) is np:
            self.comm.Allgather(np.ascontiguousarray(part), out)
        elif self.nccl is not None:
            self._nccl_call("allGather", part, out, part.size)
        else:
            host = np.empty(out.shape, dtype=out.dtype)
            self.allgather(asnumpy(part), host)
            out[...] = get_array_module(out).asarray(host)
        return out

    def sum(self, values):
        """The sum over ranks of a few float64 numbers (losses, token counts): a NumPy array."""
        return self.allreduce(np.array(values, dtype=np.float64))

    def allgather_object(self, obj):
        """[rank 0's obj, rank 1's obj, ...] (small picklable objects)."""
        return [obj] if self.size == 1 else self.comm.allgather(obj)

    def barrier(self):
        if self.size > 1:
            self.comm.Barrier()

    def abort(self, status=1):
        """End every rank of the job now (MPI Abort), with this exit status."""
        if self.size > 1:
            self.comm.Abort(status)
        sys.exit(status)

    def _nccl_call(self, name, send, recv, count, op=False):
        nccl, cupy = self._nccl_lib, get_array_module(send)
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                 np.dtype(np.float16): nccl.NCCL_FLOAT16}
        args = [send.data.ptr, recv.data.ptr, count, types[np.dtype(send.dtype)]]
        if op:
            args.append(nccl.NCCL_SUM)
        getattr(self.nccl, name)(*args, cupy.cuda.get_current_stream().ptr)


def _nccl_module():
    """cupy.cuda.nccl when libnccl loads, else None (CuPy then only warns; we stay quiet)."""
    try:  # here, not at the top: CuPy is optional, and loading NCCL warns where libnccl is missing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl
    except Exception:  # ImportError, or a simulated CuPy without it
        return None
    return nccl if getattr(nccl, "available", False) else None


# --- loud failure and agreement ----------------------------------------------------------

@contextlib.contextmanager
def loud_failure(world):
    """Around the work of every rank: an exception on any rank ends the whole job in seconds.

    Without it, a rank that dies leaves the others waiting forever inside their next
    all-reduce. The failing rank prints `rank r/N: message` (a user's mistake as its one
    sentence, anything else with its traceback) and calls MPI Abort, which makes mpiexec end
    every rank; the job's exit status is non-zero (2 for a user's mistake, 1 otherwise).
    An AllRanksError is raised identically on every rank: rank 0 reports it, the others leave.
    """
    if world.size == 1:
        yield
        return
    try:
        yield
    except AllRanksError:
        if world.is_root:
            raise
        sys.exit(2)
    except BaseException as e:  # noqa: B036 -- KeyboardInterrupt too: the other ranks must not hang
        if isinstance(e, SystemExit) and not e.code:
            raise
        text = f"error: {e}" if isinstance(e, PicoGPTError) else traceback.format_exc().rstrip()
        print(f"rank {world.rank}/{world.size}: {text}\nrank {world.rank}/{world.size}: aborting every rank.",
              file=sys.stderr, flush=True)
        time.sleep(0.5)  # let mpiexec forward the message before Abort tears down its I/O proxies
        world.abort(2 if isinstance(e, PicoGPTError) else 130 if isinstance(e, KeyboardInterrupt) else 1)


def check_agreement(world, facts):
    """Every rank's `facts` (name -> JSON-able value; dicts are compared key by key) must equal
    rank 0's. Otherwise every rank raises the same AllRanksError naming the first difference."""
    everyone = world.allgather_object(facts)
    for r, theirs in enumerate(everyone[1:], start=1):
        for name, ours in everyone[0].items():
            for key, a, b in _differences(name, ours, theirs.get(name)):
                raise AllRanksError(f"rank {r} and rank 0 disagree on the {key} ({b!r} vs {a!r}): start every rank "
                                    "with the same command, the same data and the same picogpt.")


def _differences(name, a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return [(f"{name} {k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return [] if a == b else [(name, a, b)]


def data_fingerprint(path, edge=1 << 16):
    """A short hash of a data file or folder: each file's name, size and first and last 64 KiB.

    Cheap on any size of data (it does not read the middle), yet different for any other
    corpus, split or shard layout, and for a file still being written.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}:".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(edge))
            fh.seek(max(size - edge, 0))
            h.update(fh.read(edge))
    return h.hexdigest()[:16]


def source_fingerprint():
    """picogpt's version and a hash of its Python source: two ranks running different code
    would silently compute different things."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


# --- one flat buffer ------------------------------------------------------------------------

class FlatLayout:
    """Where each named array lives in one flat 1-D buffer: end to end in `names` order, the
    total padded with zeros to a multiple of `parts` (the ranks) so that it splits evenly.

    One buffer means one collective call per step instead of one per tensor: each call has a
    fixed cost (latency, a kernel launch), and large messages use the network best.
    """

    def __init__(self, shapes, parts=1):
        self.names = list(shapes)
        self.shapes = {k: tuple(shapes[k]) for k in self.names}
        self.offsets, n = {}, 0
        for k in self.names:
            self.offsets[k] = n
            n += int(np.prod(self.shapes[k], dtype=np.int64))
        self.size = n
        self.padded = -(-n // parts) * parts
        self.parts = parts

    @classmethod
    def of(cls, arrays, names=None, parts=1):
        names = list(arrays) if names is None else list(names)
        return cls({k: arrays[k].shape for k in names}, parts)

    def shard(self, rank):
        """The slice of the flat buffer that rank `rank` owns under ZeRO."""
        n = self.padded // self.parts
        return slice(rank * n, (rank + 1) * n)

    def flatten(self, arrays, out=None):
        """The named arrays end to end in one new (or the given) buffer (padded,)."""
        if out is None:
            first = arrays[self.names[0]]
            out = get_array_module(first).zeros(self.padded, dtype=first.dtype)
        for k, view in self.unflatten(out).items():
            view[...] = arrays[k]
        return out

    def unflatten(self, buf):
        """name -> a view into buf with that array's shape (writing to it writes the buffer)."""
        return {k: buf[self.offsets[k]:self.offsets[k] + _numel(s)].reshape(s) for k, s in self.shapes.items()}

    def mask(self, names):
        """A bool (padded,) NumPy array, True over the named arrays."""
        m = np.zeros(self.padded, dtype=bool)
        for k in names:
            m[self.offsets[k]:self.offsets[k] + _numel(self.shapes[k])] = True
        return m


def _numel(shape):
    return int(np.prod(shape, dtype=np.int64))


def flatten(arrays, names=None):
    """The arrays (a dict) end to end in one new 1-D buffer, in `names` order."""
    return FlatLayout.of(arrays, names).flatten(arrays)


def unflatten(buf, like, names=None):
    """Views into buf shaped like the arrays of `like` (the inverse of flatten)."""
    return FlatLayout.of(like, names).unflatten(buf)


class GradientSum:
    """Micro-batch gradients summed, each weighted by its token count, into one flat buffer.

    The mean over every target token of the global batch is sum(count_i x mean_i) / sum(count_i)
    over the micro-batches i of every rank; adding count_i x grad_i here and dividing by the
    global count after the all-reduce gives exactly that, however the tokens were split.
    """

    def __init__(self, layout, xp, dtype):
        self.layout = layout
        self.buf = xp.zeros(layout.padded, dtype=dtype)
        self.views = layout.unflatten(self.buf)
        self.reset()

    def reset(self):
        """Start a new sum in the same buffer (the trainer keeps one: no fresh memory every step)."""
        self.loss, self.count, self.empty = 0.0, 0, True

    def add(self, grads, loss, count):
        """Add one micro-batch: its mean loss and mean gradients over `count` target tokens
        (grads None: its loss only, as for a float16 step that overflowed and will be skipped)."""
        self.loss += float(loss) * count
        self.count += int(count)
        if grads is None:
            return
        xp = get_array_module(self.buf)
        for k, view in self.views.items():
            if self.empty:
                xp.multiply(grads[k], count, out=view)
            else:
                view += grads[k] * count
        self.empty = False

    def reduce(self, world, scatter=False):
        """(mean loss, global token count, gradient): the gradient is the whole flat buffer
        averaged (all-reduce), or with scatter=True this rank's averaged slice of it (reduce-scatter)."""
        loss, count = world.sum([self.loss, self.count])
        if self.empty:              # no gradient was added (a skipped float16 step): the sum is zero
            self.buf.fill(0)
        grad = world.reduce_scatter(self.buf) if scatter else world.allreduce(self.buf)
        grad /= max(count, 1.0)
        return float(loss / max(count, 1.0)), int(count), grad


# --- ZeRO stage 1 -------------------------------------------------------------------------------

class ZeroAdamW:
    """AdamW with its moments sharded over the ranks (ZeRO stage 1).

    Rank r holds m and v for its slice of the flat parameter buffer only: 2 x P / N numbers
    instead of 2 x P. `step` takes this rank's slice of the averaged gradient (from a
    reduce-scatter), updates that slice of the parameters, and all-gathers the slices so every
    rank holds all the new parameters. Checkpoints hold the whole moments (`state_dict` gathers
    them), so a run can resume with any number of ranks, with or without ZeRO.
    """

    def __init__(self, world, params, names=None, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8):
        names = list(params) if names is None else list(names)
        self.world, self.weight_decay, self.betas, self.eps = world, weight_decay, betas, eps
        self.layout = FlatLayout.of(params, names, world.size)
        self.part = self.layout.shard(world.rank)
        first = params[names[0]]
        xp = get_array_module(first)
        n = self.part.stop - self.part.start
        self.m = xp.zeros(n, dtype=first.dtype)
        self.v = xp.zeros(n, dtype=first.dtype)
        self.decay = xp.asarray(self.layout.mask([k for k in names if decays(params[k])])[self.part])
        self.flat = xp.zeros(self.layout.padded, dtype=first.dtype)   # the parameters, gathered
        self.t = 0

    def nbytes(self):
        """Bytes of optimizer state on this rank (m and v)."""
        return int(self.m.nbytes + self.v.nbytes)

    def step(self, params, grad_part, lr):
        """Update `params` (a dict, in place) from this rank's slice of the averaged gradient."""
        self.t += 1
        self.layout.flatten(params, out=self.flat)
        p = self.flat[self.part].copy()
        adamw_update(p, grad_part, self.m, self.v, lr, self.t, self.weight_decay, self.betas, self.eps, self.decay)
        self.world.allgather(p, self.flat)
        for k, view in self.layout.unflatten(self.flat).items():
            params[k][...] = view

    def state_dict(self):
        """The whole moments, gathered from every rank, keyed as picogpt.optim.AdamW keys them."""
        arrays = {}
        for tag, part in (("m", self.m), ("v", self.v)):
            full = self.world.allgather(part, get_array_module(part).zeros(self.layout.padded, dtype=part.dtype))
            arrays.update({f"{tag}:{k}": a for k, a in self.layout.unflatten(full).items()})
        return arrays, {"t": self.t}

    def load_state_dict(self, arrays, scalars):
        """Take this rank's slice of whole moments (from any run: sharded or not, any N)."""
        xp = get_array_module(self.m)
        for tag in ("m", "v"):
            full = self.layout.flatten({k: xp.asarray(np.asarray(arrays[f"{tag}:{k}"], dtype=self.m.dtype))
                                        for k in self.layout.names}, out=xp.zeros(self.layout.padded, self.m.dtype))
            setattr(self, tag, full[self.part].copy())
        self.t = int(scalars["t"])


def clip_flat(grad, max_norm, world=None):
    """clip_grad_norm on the flat gradient buffer, in place; returns the norm before clipping.

    With `world`, `grad` is this rank's slice (ZeRO-1) and the global norm is the square root of
    the sum over ranks of each slice's sum of squares. One sum over a flat 1-D buffer is also the
    accurate one: NumPy sums a contiguous 1-D array pairwise, while summing a (V, C) matrix runs
    down its V rows one by one in float32, which can be off in the 6th digit.
    """
    squares = float(sum_of_squares(grad))
    norm = float(np.sqrt(world.sum([squares])[0] if world is not None else squares))
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        grad *= scale
    return norm


def adamw_nbytes(params, names):
    """Bytes that plain AdamW's moments take (2 numbers per trainable parameter)."""
    return 2 * sum(int(params[k].nbytes) for k in names)


# --- the batch, shared out ----------------------------------------------------------------------

class RowStreams:
    """Random numbers drawn row by row, row g of the global batch from its own stream.

    Stands in for a random Generator in the layers (dropout calls `rng.random(shape, dtype)`
    with the batch on axis 0). Because each global row has its own seeded stream, a row's
    dropout masks are the same whichever rank, micro-batch or batch size it is computed in:
    the condition for N ranks to equal one process exactly.
    """

    def __init__(self, xp, seed, step, rows):
        self.gens = [make_rng(xp, row_seed(seed, step, g)) for g in rows]

    def random(self, shape, dtype=np.float32):
        if shape[0] != len(self.gens):
            raise ValueError(f"RowStreams for {len(self.gens)} rows asked for an array of shape {shape}")
        draws = [g.random(shape[1:], dtype=dtype) for g in self.gens]
        return get_array_module(draws[0]).stack(draws)


def row_seed(seed, step, row):
    """A 64-bit seed for (run seed, step, global row): NumPy's SeedSequence mixes them."""
    return int(np.random.SeedSequence([seed, 2, step, row]).generate_state(1, np.uint64)[0])


def my_rows(world, batch_size, micro=0):
    """The global row indices this rank takes in micro-batch `micro`: the step's global batch
    is micro-batch-major, each micro-batch world.size x batch_size rows, rank-major inside."""
    start = (micro * world.size + world.rank) * batch_size
    return range(start, start + batch_size)
