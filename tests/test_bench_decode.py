"""bench/decode.py's products alone: the same products, of the same shapes, as a decode step.

Nothing is timed: the test checks that the list the benchmark times beside the decode (and sets
against the 1.5x goal) is the list of products picogpt's own decode step runs, in NumPy.
"""

import subprocess
import sys

from helpers import ROOT, subprocess_env

# In a child process: the benchmarks' `common` sets BLAS thread variables when it is imported.
SCRIPT = """import sys
import numpy as np
sys.argv = ["decode.py"]
import decode
from common import projection_shapes
import picogpt.layers as L
from picogpt.config import GPT2Config
from picogpt.generation import generate
from picogpt.model import GPT2, init_params

config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_ctx=32, vocab_size=50)
model = GPT2(config, init_params(config, np, np.float32, seed=0), device="cpu")
shapes, linear_forward = [], L.linear_forward

def recording(x, W, b=None):
    shapes.append((x.reshape(-1, x.shape[-1]).shape[0], *W.shape))
    return linear_forward(x, W, b)

L.linear_forward = recording
generate(model, np.zeros((3, 4), dtype=np.int64), 2, temperature=0.0, stop_at_eot=False)
step = [(3, i, o) for i, o in projection_shapes(config)]
assert len(step) == 4 * 2 + 1, step
assert shapes[len(step):] == step, (shapes, step)          # the second token's step, one row per sequence
shapes.clear()
run, sync = decode.products_run(None, config, 3, 2)
run(), sync()
assert shapes == step * 2, shapes
print("same products")
"""


def test_decode_benchmark_times_the_products_of_a_decode_step():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                       cwd=ROOT / "bench", env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("same products")
