"""The GPU path (CuPy) against the same references as the CPU: training, LoRA, sampling, float16.

Every test here is marked `gpu` and skipped where CuPy sees no CUDA device (see conftest.py).
The tests that are the same on both devices are not here but parametrized over the device (conftest's
`device` and `xp` fixtures): the forward, generation, loss and gradients against transformers
(test_reference.py), AdamW against torch (test_optim.py), the gradient checks (test_gradients.py).
Here are the tests that compare the two devices, or run what only a GPU has (float16, TF32).
"""

import re

import numpy as np
import pytest
from helpers import TINY, host, quiet, rel_err, write_text

import picogpt
from picogpt.lora import merge_lora

pytestmark = pytest.mark.gpu


def _text(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_text(tmp_path / "text.txt")


def _trainer(tmp_path, device, **kw):
    from picogpt.train import TrainConfig, Trainer

    cfg = TrainConfig(data=str(_text(tmp_path)), out=str(tmp_path / f"out-{device}"), model="gpt2-micro",
                      n_embd=32, n_head=2, block_size=16, batch_size=4, steps=6, warmup_steps=2,
                      eval_interval=3, eval_batches=2, log_interval=3, device=device, seed=3, **kw)
    return Trainer(cfg, log=quiet)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_trainer_runs_on_the_gpu_and_agrees_with_the_cpu(tmp_path, dropout):
    cpu, gpu = _trainer(tmp_path, "cpu", dropout=dropout), _trainer(tmp_path, "gpu", dropout=dropout)
    cpu_losses = [cpu.step()["loss"] for _ in range(3)]
    gpu_losses = [gpu.step()["loss"] for _ in range(3)]
    assert all(np.isfinite(gpu_losses))
    if dropout == 0.0:  # with dropout the two devices draw different masks
        np.testing.assert_allclose(gpu_losses, cpu_losses, atol=1e-4)
    last = gpu.run()
    assert np.isfinite(last["val_loss"])
    assert picogpt.load_model(tmp_path / "out-gpu").config.n_embd == 32


def test_lora_on_the_gpu_changes_only_the_adapters(tmp_path):
    trainer = _trainer(tmp_path, "gpu", lora_rank=4)
    before = {k: host(a).copy() for k, a in trainer.model.params.items()}
    for _ in range(3):
        trainer.step()
    for k, a in trainer.model.params.items():
        changed = not np.array_equal(host(a), before[k])
        assert changed == k.endswith((".lora_A", ".lora_B")), k
    merged = merge_lora(trainer.model)
    ids = np.arange(12)[None] % 50
    assert rel_err(merged.forward(ids), host(trainer.model.forward(ids))) <= 1e-5


def test_a_seed_samples_the_same_tokens_on_cpu_and_gpu():
    cpu = picogpt.load_model(TINY)
    gpu = cpu.to("gpu")
    prompt = [[1, 2, 3, 4]]
    kw = dict(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.95, seed=123)
    assert gpu.generate(prompt, **kw).tolist() == cpu.generate(prompt, **kw).tolist()


def test_float16_inference_on_the_gpu_is_close_to_float32(reference):
    m32 = picogpt.load_model(TINY, device="gpu")
    m16 = picogpt.load_model(TINY, device="gpu", dtype="float16")
    assert m16.dtype == np.float16
    diff = np.abs(host(m16.forward(reference["ids"])).astype(np.float32) - reference["logits"]).max()
    assert diff < 0.05
    out = m16.generate(reference["greedy_prompt"], max_new_tokens=8)
    assert out.shape == (2, 16)


def test_tf32_training_step_runs():
    from picogpt.backend import set_tf32

    set_tf32(True)
    try:
        model = picogpt.load_model(TINY, device="gpu")
        loss, grads = model.loss_and_grads(np.arange(16)[None], np.arange(1, 17)[None])
        assert np.isfinite(loss) and set(grads) == set(model.params)
    finally:
        set_tf32(False)


# --- the commands and the rest of the API on the GPU ------------------------------------------

def test_generate_command_prints_the_same_text_on_the_gpu(capsys):
    from picogpt.generate import main

    printed = {}
    for device in ("cpu", "gpu"):
        assert main(["ROMEO.", "--max-new-tokens", "12", "--temperature", "0", "--device", device]) == 0
        captured = capsys.readouterr()
        assert f"on {device}]" in captured.err
        printed[device] = captured.out
    assert printed["gpu"] == printed["cpu"]


SAMPLERS = ({"temperature": 0.9}, {"temperature": 0.8, "top_k": 40}, {"temperature": 1.0, "top_p": 0.9})


def test_the_same_logits_and_seed_draw_the_same_tokens_on_both_devices():
    """The uniform draws come from the host and the CDF is summed in float64, so the same
    logits give the same tokens on both devices, over the whole vocabulary too."""
    from picogpt.backend import to_device
    from picogpt.sampling import sample

    model = picogpt.load_model()
    ids = picogpt.get_tokenizer().encode("ROMEO.\nWhat light through yonder window breaks? It is the east, and")
    logits = model.forward(ids).reshape(len(ids), -1)             # (T, V): 18 real next-token rows
    for i, kw in enumerate(SAMPLERS):
        on = {d: [host(sample(to_device(logits, d), rng=np.random.default_rng([i, r]), **kw)) for r in range(8)]
              for d in ("cpu", "gpu")}
        assert all(np.array_equal(a, b) for a, b in zip(on["gpu"], on["cpu"])), kw


def test_sampling_on_the_gpu_draws_the_cpu_tokens_for_a_seed():
    """Generation end to end: one seed, the same tokens on both devices. Among the 40 most likely
    tokens the last-bit differences between the devices' logits (float32 products summed in another
    order) move a draw's boundaries by ~1e-6 of their gaps; over the whole vocabulary, where tens of
    thousands of tiny probabilities sit ~1e-5 apart, they would flip about one draw in a thousand
    (measured on the bundled model), which the test above checks with the logits held equal."""
    prompts = [[464, 3290, 318], [40, 716]]   # two lengths: left padding on the device too
    cpu, gpu = picogpt.load_model(), picogpt.load_model(device="gpu")
    for kw in ({"temperature": 0.8, "top_k": 40, "seed": 2}, {"temperature": 1.0, "top_k": 40, "seed": 3}):
        assert gpu.generate(prompts, 16, **kw) == cpu.generate(prompts, 16, **kw), kw


def test_eval_command_scores_the_same_loss_on_the_gpu(tmp_path, capsys):
    from picogpt.eval import main

    text = _text(tmp_path)
    scores = {}
    for device in ("cpu", "gpu"):
        assert main(["--text", str(text), "--context", "64", "--stride", "32", "--device", device]) == 0
        line = capsys.readouterr().out.splitlines()[-1]          # "loss 8.7550 nats/token, perplexity 6341.92"
        m = re.fullmatch(r"loss (\d+\.\d{4}) nats/token, perplexity (\d+\.\d{2})", line)
        assert m, line
        scores[device] = [float(v) for v in m.groups()]
    # The same float32 sums in another order: equal to ~1e-7 of the loss, so the printed loss may
    # differ by one in its last digit, and the perplexity (e^loss, ~6,000) by a few hundredths.
    loss, ppl = scores["cpu"]
    assert abs(scores["gpu"][0] - loss) <= 1.01e-4 and abs(scores["gpu"][1] - ppl) <= 1e-5 * ppl + 0.01


def test_training_on_the_gpu_resumes_as_if_never_stopped(tmp_path):
    whole = _trainer(tmp_path / "whole", "gpu")
    losses = [whole.step()["loss"] for _ in range(4)]
    part = _trainer(tmp_path / "part", "gpu")
    first = [part.step()["loss"] for _ in range(2)]
    part.save_checkpoint()
    resumed = _trainer(tmp_path / "part", "gpu", resume=True)
    assert resumed.model.device == "gpu" and resumed.step_num == 2
    rest = [resumed.step()["loss"] for _ in range(2)]
    np.testing.assert_allclose(first + rest, losses, rtol=0, atol=1e-6)
    for k, a in whole.model.params.items():
        assert rel_err(resumed.model.params[k], host(a)) <= 1e-5, k


def test_embedding_gradient_sums_repeated_ids_the_same_on_every_run():
    """The sum behind the embedding's gradient (backend.scatter_add): right, and bit for bit the
    same when run again (CuPy's own scatter_add, with atomics, is neither run to run)."""
    from picogpt.backend import scatter_add, to_device

    rng = np.random.default_rng(0)
    ids, values = rng.integers(0, 50, 20_000), rng.standard_normal((20_000, 64)).astype(np.float32)
    want = np.zeros((60, 64))
    np.add.at(want, ids, values.astype(np.float64))
    runs = []
    for _ in range(3):
        got = to_device(np.ones((60, 64), np.float32), "gpu")
        scatter_add(got, to_device(ids, "gpu"), to_device(values, "gpu"))
        runs.append(host(got))
    np.testing.assert_allclose(runs[0], want + 1, rtol=0, atol=1e-4)   # float32 rounding of sums ~ 150
    assert all(np.array_equal(r, runs[0]) for r in runs)
    empty = to_device(np.ones((3, 2), np.float32), "gpu")
    scatter_add(empty, to_device(np.zeros(0, np.int64), "gpu"), to_device(np.zeros((0, 2), np.float32), "gpu"))
    assert np.array_equal(host(empty), np.ones((3, 2)))


def test_lora_adapters_saved_from_the_gpu_load_back_onto_it(tmp_path):
    from picogpt.lora import load_adapters, save_adapters

    trainer = _trainer(tmp_path, "gpu", lora_rank=4)
    for _ in range(2):
        trainer.step()
    path = save_adapters(trainer.model, tmp_path / "adapters.safetensors")
    fresh = _trainer(tmp_path / "fresh", "gpu").model
    load_adapters(fresh, path)
    ids = np.arange(12)[None] % 50
    assert rel_err(fresh.forward(ids), host(trainer.model.forward(ids))) <= 1e-6


def test_float16_on_the_gpu_stays_close_to_float32():
    ids = picogpt.get_tokenizer().encode("ROMEO.\nWhat light through yonder")
    full = picogpt.load_model(device="gpu")
    half = picogpt.load_model(device="gpu", dtype="float16")
    assert half.dtype == np.float16
    logits32 = host(full.forward(ids))
    logits16 = host(half.forward(ids)).astype(np.float32)
    assert np.isfinite(logits16).all()
    assert rel_err(logits16, logits32) <= 2e-2
    assert (logits16.argmax(-1) == logits32.argmax(-1)).mean() >= 0.8
    out = half.generate(ids, 8)                 # the KV cache and sampling in float16 too
    assert out.shape == (len(ids) + 8,)


def test_tf32_training_on_the_gpu_stays_close_to_float32(tmp_path):
    from picogpt.backend import set_tf32

    exact = _trainer(tmp_path / "fp32", "gpu")
    exact_losses = [exact.step()["loss"] for _ in range(3)]
    try:
        fast = _trainer(tmp_path / "tf32", "gpu", tf32=True)
        fast_losses = [fast.step()["loss"] for _ in range(3)]
    finally:
        set_tf32(False)   # the switch is process-wide
    np.testing.assert_allclose(fast_losses, exact_losses, rtol=0, atol=1e-2)
