"""bench/breakdown.py, the op-by-op profile, run as a user runs it (a child process, the tiny shape).

Nothing here is timed against anything: the test checks that every op the step runs is found
and timed, and that the rows add up to the timed run.
"""

import re
import subprocess
import sys

import pytest
from helpers import ROOT, subprocess_env


# The script run by path, or, for the GPU on the simulated device, with the device installed first.
DRIVER = """import os, runpy, sys
if os.environ.get("PICOGPT_SIMULATED_GPU") == "1":
    sys.path.insert(0, {tests!r})
    from simulated_gpu import install
    install()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def breakdown(*args):
    driver = ["-c", DRIVER.format(tests=str(ROOT / "tests"))]
    r = subprocess.run([sys.executable, *driver, str(ROOT / "bench" / "breakdown.py"), "--shape", "tiny", "--steps", "2",
                        *args], capture_output=True, text=True, timeout=120, cwd=ROOT / "bench", env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    timed = float(re.search(r"with the timers ([\d,.]+) ms", r.stdout).group(1).replace(",", ""))
    rows = {m.group(1): (float(m.group(2).replace(",", "")), m.group(3))
            for m in re.finditer(r"^(\w+)\s+([\d,.-]+)\s+-?\d+%\s+(\S+)$", r.stdout, re.M)}
    return timed, rows


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("mode", ["train", "decode"])
def test_breakdown_times_every_op_and_the_rows_add_up(mode, device):
    timed, rows = breakdown("--device", device, *(["--decode", "--batch", "2"] if mode == "decode" else []))
    if mode == "train":   # the tiny shape's 80-token rows take the blocked causal attention
        expected = {"linear_forward", "linear_backward", "layernorm_forward", "layernorm_backward", "gelu_forward",
                    "gelu_backward", "causal_attention_forward", "causal_attention_backward", "lm_head_cross_entropy",
                    "embedding_forward", "embedding_backward", "adamw_update", "clip_grad_norm"}
    else:
        expected = {"linear_forward", "layernorm_forward", "gelu_forward", "attention_forward", "embedding_forward"}
    assert expected <= set(rows), sorted(rows)
    assert rows["other"][1] == "-" and all(int(calls) >= 1 for name, (_, calls) in rows.items() if name != "other")
    assert abs(sum(ms for ms, _ in rows.values()) - timed) <= 0.01 * len(rows) + 1e-6 * timed


@pytest.mark.parametrize("flag", ["--steps", "--batch"])
def test_breakdown_refuses_a_count_below_one_in_one_sentence(flag):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "breakdown.py"), flag, "0"], capture_output=True,
                       text=True, timeout=60, cwd=ROOT / "bench", env=subprocess_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("--steps and --batch must be at least 1, got "
                                                       + ("0 and 1." if flag == "--steps" else "5 and 0."))
