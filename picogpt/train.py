"""The training loop and `python -m picogpt.train`: from scratch, from GPT-2, or with LoRA.

One step: draw `grad_accum` random batches, run forward + backward on each (model.loss_and_grads),
average their gradients, clip them by global norm, set the learning rate (warmup + cosine), and
let AdamW update the parameters. Every `eval_interval` steps the validation loss is measured on a
fixed set of batches, and a checkpoint is written atomically.

Determinism: step s draws its batches and its dropout masks from generators seeded by (seed, s),
so a run resumed from a checkpoint at step s continues exactly as an uninterrupted run would.

The output folder holds
  checkpoint.safetensors   parameters being trained, AdamW's moments, the step, both configs
  config.json + model.safetensors   the model, ready for `python -m picogpt.generate --model OUT`
  adapters.safetensors     (LoRA runs) the adapters alone
  log.jsonl                one JSON line per step (its own loss) and per evaluation

Fine-tuning on examples: a folder made by `python -m picogpt.data --task sft|classify` has a
meta.json naming its task, and the trainer follows it (see `task_of`): batches are whole
examples from sft.ExampleBatches (padded targets -100; an example longer than the block is cut
from the left and counted in the log); SFT's loss is the mean over the trained tokens; a
classifier (a language model gets a new head, heads.make_classifier) is trained with
heads.classification_loss_and_grads and evaluated with its accuracy too. `--epochs N` sets
the steps to N passes over the training examples (or tokens); the sampler's (epoch, position)
is in the checkpoint, so --resume stays exact.

Early stopping (`--patience N`, any task): training stops after N evaluations without a lower
validation loss. The folder's config.json + model.safetensors are then the BEST model (written
at each improvement), while checkpoint.safetensors stays the last step, so --resume continues.

Steps are counted from 1: "step 10" is the state after ten updates, in the progress line, in
log.jsonl, in the checkpoint and in what `Trainer.step()` returns. The progress line's loss is
the mean over the steps since the previous line; log.jsonl has each step's own.
"""

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import adaptive
from . import amp
from . import data as D
from . import distill
from . import heads as H
from . import layers as L
from . import lora as lora_mod
from . import parallel as P
from . import prune
from . import safetensors
from . import sft
from .backend import asnumpy, resolve_device, set_tf32, synchronize
from .cli import clock, run_command
from .config import get_config
from .errors import PicoGPTError
from .files import atomic_open, make_folder, write_json
from .memory import check_fits, training_bytes
from .model import GPT2
from .optim import AdamW, lr_at
from .peft import methods as peft_methods
from .peft.formats import save_adapters
from .tokenizers import describe, get_tokenizer
from .tokenizers import same as same_tokenizer
from .weights import init_model, load_model, save_model


@dataclass
class TrainConfig:
    data: str                       # a text file, or a folder made by `python -m picogpt.data`
    out: str = "out"                # where checkpoints and logs go
    model: str = "gpt2-tiny"        # config preset for --init scratch
    n_layer: int | None = None      # overrides of the preset (scratch only)
    n_head: int | None = None
    n_embd: int | None = None
    bias: bool | None = None        # False: no biases in linear layers and layer norms (scratch only; default True)
    gelu: str | None = None         # tanh (GPT-2's, the default) | exact (erf, as nanoGPT and torch's nn.GELU)
    init: str = "scratch"           # scratch | shakespeare | gpt2 | gpt2-medium | ... | a checkpoint folder
    steps: int = 1000
    batch_size: int = 16
    block_size: int | None = None   # context of a training window (default: the model's n_ctx)
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr: float | None = None     # default lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # 0 = no clipping
    dropout: float = 0.0
    eval_interval: int = 100
    eval_batches: int = 20
    log_interval: int = 10
    save_interval: int | None = None  # default eval_interval
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"
    tf32: bool = False
    lora_rank: int = 0              # > 0: freeze the base, train rank-r adapters
    lora_alpha: float | None = None   # default: the rank (scale 1)
    # --- other parameter-efficient methods (picogpt/peft/), base frozen; one at a time
    prefix_tokens: int = 0          # > 0: prefix-tuning with this many virtual tokens
    prefix_hidden: int = 0          # > 0: train the prefix through the paper's MLP of this width
    adapter_size: int = 0           # > 0: bottleneck adapters of this width
    adapter_kind: str = "houlsby"   # houlsby (after attention and MLP) | pfeiffer (after the MLP)
    bitfit: bool = False            # train only the biases
    val_fraction: float | None = None  # text files only (default 0.05); a prepared folder has its split
    resume: bool = False
    zero: int = 0                   # ZeRO stage over the ranks (mpiexec): 0, or 1 = AdamW's moments sharded
    epochs: int | None = None       # passes over the training data; when given, sets `steps`
    patience: int | None = None     # early stopping: evaluations without a lower val loss (None = off)
    # --- compression (prune.py, distill.py, amp.py) ---
    prune_masks: str | None = None  # pruning masks to keep (default: the --init folder's prune_masks.safetensors)
    teacher: str | None = None      # distillation: the teacher model (name or folder)
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5      # weight of the teacher's KL; 1 - alpha: the text's cross-entropy
    loss_scale: float = 65536.0     # --dtype float16: the initial loss scale
    loss_scale_window: int = 1000   # --dtype float16: clean steps before the scale doubles
    adaptive_softmax_cutoffs: str | None = None   # "2000,10000": adaptive softmax output layer (scratch only)

    def check(self):
        """Refuse, in one sentence naming the flag, a setting that cannot train as the user means."""
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise PicoGPTError(f"the learning rate must be > 0, got {self.lr}.")
        if self.min_lr is not None and not 0.0 <= self.min_lr <= self.lr:  # also refuses NaN
            raise PicoGPTError(f"--min-lr must be between 0 and --lr ({self.lr:g}): the cosine decays from --lr down "
                               f"to it, got {self.min_lr}.")
        for name, default in (("beta1", 0.9), ("beta2", 0.95)):
            b = getattr(self, name)
            if not 0.0 <= b < 1.0:  # b = 1 divides by 1 - b^t = 0; b > 1 or < 0 makes the averages diverge
                raise PicoGPTError(f"--{name} must be at least 0 and below 1 (AdamW's moving-average factor, "
                                   f"default {default}), got {b}.")
        for name in ("steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval"):
            if getattr(self, name) < 1:
                raise PicoGPTError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise PicoGPTError("warmup steps, weight decay and gradient clip must be >= 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise PicoGPTError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.block_size is not None and self.block_size < 1:
            raise PicoGPTError(f"block-size must be >= 1, got {self.block_size}.")
        if self.lora_rank < 0:
            raise PicoGPTError(f"lora-rank must be >= 0, got {self.lora_rank}.")
        if self.lora_alpha is not None and not self.lora_alpha > 0:  # also refuses NaN
            raise PicoGPTError(f"--lora-alpha must be > 0 (updates are scaled by alpha / rank; 0 would learn nothing), "
                               f"got {self.lora_alpha}.")
        for name in ("prefix_tokens", "prefix_hidden", "adapter_size"):
            if getattr(self, name) < 0:
                raise PicoGPTError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        methods = [f for f in ("lora_rank", "prefix_tokens", "adapter_size", "bitfit") if getattr(self, f)]
        if len(methods) > 1:
            flags = " and ".join("--" + m.replace("_", "-") for m in methods)
            raise PicoGPTError(f"choose one parameter-efficient method, not {flags}.")
        if self.save_interval is not None and self.save_interval < 1:
            raise PicoGPTError(f"--save-interval must be >= 1 step, got {self.save_interval}.")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise PicoGPTError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}.")
        if self.epochs is not None and self.epochs < 1:
            raise PicoGPTError(f"--epochs must be >= 1, got {self.epochs}.")
        if self.teacher is not None:
            distill.check_settings(self.distill_temperature, self.distill_alpha)
            if self.dtype == "float16":
                raise PicoGPTError("--teacher with --dtype float16 is not supported: distil in float32.")
        if not self.loss_scale > 0 or self.loss_scale_window < 1:
            raise PicoGPTError(f"--loss-scale must be > 0 and --loss-scale-window >= 1, got {self.loss_scale} and "
                               f"{self.loss_scale_window}.")
        if self.patience is not None and self.patience < 1:
            raise PicoGPTError(f"--patience must be >= 1 evaluation without a lower validation loss, got "
                               f"{self.patience} (leave it out to train all the steps).")
        if self.zero not in (0, 1):
            raise PicoGPTError(f"--zero must be 0 or 1 (stage 1 shards AdamW's moments over the ranks), got {self.zero}.")
        return self


def task_of(data):
    """'sft' or 'classify' for a folder made by `picogpt.data --task ...` (its meta.json says
    which), else 'lm' (a text file, or a folder of train.bin / val.bin)."""
    path = Path(data)
    if path.is_dir() and (path / "meta.json").is_file():
        task = sft.read_meta(path).get("task")
        if task in ("sft", "classify"):
            return task
    return "lm"


# The fields a resumed run must share with the checkpoint it continues.
_MUST_MATCH = ("model", "n_layer", "n_head", "n_embd", "bias", "gelu", "init", "block_size", "lora_rank", "lora_alpha", "seed", "dtype",
               "prefix_tokens", "prefix_hidden", "adapter_size", "adapter_kind", "bitfit",
               "teacher", "distill_temperature", "distill_alpha", "adaptive_softmax_cutoffs")


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _silent(*_args, **_kwargs):
    """The log of every rank but rank 0."""


class Trainer:
    """Holds the model, the optimizer and the data; `run()` trains, `step()` does one step.

    world (picogpt.parallel.World; default: this process alone): with N ranks, every batch is the
    global batch of N x batch_size rows and this rank computes its share (`self.rows`); the
    gradients are averaged over all of them (picogpt/parallel.py). Rank 0 alone logs and writes.
    """

    def __init__(self, cfg, log=print, world=None):
        self.cfg = cfg.check()
        self.world = world or P.World()
        self.log = log if self.world.is_root else _silent
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        if self.device == "gpu" and self.world.size > 1:
            self.log(self.world.use_gpu())  # one GPU per rank, before any array is made
        self.rows = slice(self.world.rank * cfg.batch_size, (self.world.rank + 1) * cfg.batch_size)
        if cfg.tf32:
            set_tf32(True)
        if not cfg.resume:
            self._check_out_is_free()
        self.task = task_of(cfg.data)   # lm | sft | classify
        if self.task == "lm":
            self.train_ids, self.val_ids = D.load_dataset(cfg.data, cfg.val_fraction)
        else:
            self._load_examples()
        if self.world.size > 1:  # ranks that would compute different things refuse to start
            P.check_agreement(self.world, {"training config": asdict(cfg), "data": P.data_fingerprint(cfg.data),
                                           "picogpt source": P.source_fingerprint()})
        self.model = self._build_model()
        self.block_size = cfg.block_size or self.model.config.n_ctx - cfg.prefix_tokens   # a prefix takes P positions
        if self.block_size + cfg.prefix_tokens > self.model.config.n_ctx or self.block_size < 1:
            raise PicoGPTError(f"a block size of {self.block_size} (plus {cfg.prefix_tokens} prefix tokens) is longer than "
                               f"the model's context of {self.model.config.n_ctx} tokens.")
        if self.task == "lm":
            D.check_length(self.train_ids, self.block_size, "train")
            D.check_length(self.val_ids, self.block_size, "validation")
        else:
            # global batches (ranks x batch_size examples); each rank takes self.rows of each
            self.batches = sft.ExampleBatches(self.examples["train"], self.world.size * cfg.batch_size, self.block_size,
                                              cfg.seed)
        V = self.model.config.vocab_size
        if int(self.train_ids.max()) >= V or int(self.val_ids.max()) >= V:
            raise PicoGPTError(f"the data holds GPT-2 token ids up to {int(max(self.train_ids.max(), self.val_ids.max()))}, "
                               f"but the model's vocabulary has only {V} tokens.")
        if cfg.epochs is not None:
            cfg.steps = self._steps_for_epochs(cfg.epochs)
        check_fits(training_bytes(self.model.config, cfg.batch_size, self.block_size, np.dtype(self.model.dtype).itemsize),
                   self.device, f"a micro-batch of {cfg.batch_size} x {self.block_size} tokens",
                   "lower --batch-size and raise --grad-accum to keep the tokens per step (or lower --block-size)")
        if cfg.lora_rank:
            self._check_lora_rank()
            self.trainable = lora_mod.add_lora(self.model, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
            if H.SCORE in self.model.params:  # a new head must learn too (peft's modules_to_save=["score"])
                self.trainable.append(H.SCORE)
        else:
            # a prefix starts as the keys and values of the data's first tokens: real words of the task
            self.trainable = peft_methods.attach(self.model, cfg.prefix_tokens, cfg.prefix_hidden, cfg.adapter_size,
                                                 cfg.adapter_kind, cfg.bitfit, cfg.seed,
                                                 init_ids=self.train_ids[:cfg.prefix_tokens]) or list(self.model.params)
            if H.SCORE in self.model.params and H.SCORE not in self.trainable:   # a new head must learn too
                self.trainable.append(H.SCORE)
        # every trainable gradient end to end in one buffer: one all-reduce per step (parallel.py)
        self.layout = P.FlatLayout.of(self.model.params, self.trainable, self.world.size)
        self._grads = None                                     # its GradientSum, made at the first step
        if cfg.zero:
            self.opt = P.ZeroAdamW(self.world, self.model.params, self.trainable, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        else:
            self.opt = AdamW(self.model.params, self.trainable, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        # --- compression: masks kept, a teacher, float16 loss scaling (None when not used) ---
        self.masks = self._pruning_masks()
        self.teacher = distill.load_teacher(cfg.teacher, self.model, self.device) if cfg.teacher else None
        if self.teacher is not None and self.task == "classify":
            raise PicoGPTError("--teacher distils a language model; a classifier cannot use it.")
        self.scaler = amp.LossScaler(cfg.loss_scale, cfg.loss_scale_window) if cfg.dtype == "float16" else None
        self.adaptive = bool(cfg.adaptive_softmax_cutoffs)
        if self.adaptive and (self.task != "lm" or self.teacher or self.scaler or self.trainable != list(self.model.params)):
            raise PicoGPTError("--adaptive-softmax-cutoffs trains a language model from scratch on text, alone: not with "
                               "examples, a teacher, float16 or a parameter-efficient method.")
        self.step_num = 0
        self.best_val = None
        self.best_step, self.since_best = None, 0   # early stopping: evaluations since the best
        self.accuracy = {}                         # classify: the last evaluation's accuracy per split
        if cfg.resume:
            self._load_checkpoint()

    # --- set-up -------------------------------------------------------------------------
    # What a run itself writes before its first checkpoint; anything else in --out belongs to someone.
    _OWN_FILES = ("train_config.json", "log.jsonl")

    def _check_out_is_free(self):
        """A fresh run writes config.json, model.safetensors, ... into --out: never over a checkpoint
        (that needs --resume) nor over files that are not a training run's."""
        if self.out.exists() and not self.out.is_dir():
            raise PicoGPTError(f"--out {self.out} is a file, not a folder: choose another --out.")
        if (self.out / "checkpoint.safetensors").is_file():
            raise PicoGPTError(f"{self.out}/ already holds a training checkpoint: add --resume to continue it, "
                               "or choose another --out (or delete that folder) to start over.")
        others = sorted(f.name for f in self.out.glob("*") if f.name not in self._OWN_FILES
                        and ".tmp-" not in f.name) if self.out.is_dir() else []  # tmp: left by a killed save
        if others:
            raise PicoGPTError(f"{self.out}/ already holds files that are not a training run's (such as {others[0]}) "
                               "and no checkpoint: choose an empty or new --out, so that nothing there is overwritten.")

    def _pruning_masks(self):
        """--prune-masks FILE, or the --init folder's prune_masks.safetensors (python -m picogpt.prune)."""
        path = self.cfg.prune_masks
        if path is None and self.cfg.init != "scratch" and (Path(self.cfg.init) / prune.MASKS_FILE).is_file():
            path = Path(self.cfg.init) / prune.MASKS_FILE
        return prune.load_masks(path, self.model.params) if path else None

    def _check_lora_rank(self):
        """An adapter A (in, r) B (r, out) of rank above min(in, out) adds numbers, not expressiveness."""
        shapes = [self.model.params[f"h.0.{t}.weight"].shape for t in lora_mod.DEFAULT_TARGETS]
        most = min(min(s) for s in shapes)
        if self.cfg.lora_rank > most:
            raise PicoGPTError(f"--lora-rank {self.cfg.lora_rank} is more than the smallest adapted projection's "
                               f"size ({most}): a rank above min(in, out) adds nothing a full matrix cannot do; "
                               f"give at most {most}.")

    def _build_model(self):
        cfg = self.cfg
        tok = D.data_tokenizer(cfg.data)   # the model's tokenizer must be the one of the data's ids
        sizes = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "bias", "gelu") if getattr(cfg, k) is not None}
        if cfg.init == "scratch":
            config = get_config(cfg.model, **sizes, vocab_size=tok.n_vocab)
            if cfg.block_size:
                config = config.replace(n_ctx=cfg.block_size + cfg.prefix_tokens)   # a prefix takes P positions
            model = init_model(config, device=self.device, dtype=self._master_dtype(), seed=cfg.seed)
            if cfg.adaptive_softmax_cutoffs:   # adaptive.py: its own output layer instead of the tied head
                cut = adaptive.parse_cutoffs(cfg.adaptive_softmax_cutoffs, config.vocab_size)
                model.params.update(adaptive.init_params(config.n_embd, cut, config.vocab_size, model.xp, model.dtype,
                                                         cfg.seed))
        else:
            if cfg.adaptive_softmax_cutoffs:
                raise PicoGPTError("--adaptive-softmax-cutoffs is for models trained from scratch (--init scratch): a "
                                   "pretrained GPT-2's output layer is the full softmax tied to its embedding.")
            if sizes:
                raise PicoGPTError("--n-layer/--n-head/--n-embd/--bias/--gelu apply to --init scratch only; a pretrained "
                                   "model keeps its sizes.")
            model = load_model(cfg.init, device=self.device, dtype=self._master_dtype())
            if model.config.pruned_heads and cfg.prefix_tokens:   # prefixes are laid out for n_head heads per layer
                raise PicoGPTError(f"--init {cfg.init} has pruned attention heads; prefix-tuning needs every layer's "
                                   "full set of heads: use LoRA or adapters with it.")
            if not same_tokenizer(tok, get_tokenizer(model)):
                raise PicoGPTError(f"the data ({cfg.data}) is tokenised with {describe(tok)} but --init {cfg.init} uses "
                                   f"{describe(get_tokenizer(model))}: prepare the data with the model's tokenizer, or "
                                   "train with --init scratch.")
        model.tokenizer = tok
        model = self._model_for_task(model)
        model.config = model.config.replace(dropout=cfg.dropout)
        return model

    def _master_dtype(self):
        """The parameters' dtype: --dtype float16 trains float32 master weights (amp.py)."""
        return "float32" if self.cfg.dtype == "float16" else self.cfg.dtype

    # --- examples (sft / classify) --------------------------------------------------------
    def _load_examples(self):
        """Both splits of an examples folder; train_ids / val_ids are their concatenated tokens."""
        self.examples = {split: sft.load_examples(self.cfg.data, split) for split in ("train", "val")}
        self.train_ids, self.val_ids = self.examples["train"].ids, self.examples["val"].ids
        self.labels = self.examples["train"].meta.get("label_names")
        if self.task == "classify" and not self.labels:
            raise PicoGPTError(f"{self.cfg.data}/meta.json names no labels (label_names): prepare it again with "
                               "`python -m picogpt.data --task classify`.")

    def _model_for_task(self, model):
        """A classifier for `classify` (a language model gets a new head, as transformers
        initialises it), a language model for the others."""
        if self.task != "classify":
            if model.config.labels:
                raise PicoGPTError(f"--init {self.cfg.init} is a sequence classifier; {self.task} training needs a "
                                   "language model.")
            return model
        if not model.config.labels:
            return H.make_classifier(model, self.labels, seed=self.cfg.seed)
        if list(model.config.labels) != list(self.labels):
            raise PicoGPTError(f"--init {self.cfg.init} classifies into {', '.join(model.config.labels)}, but the data's "
                               f"labels are {', '.join(self.labels)}.")
        return model

    def _steps_for_epochs(self, epochs):
        """Steps that make `epochs` passes: over the examples, or over the train split's tokens."""
        cfg = self.cfg
        per_epoch = len(self.batches) if self.task != "lm" else \
            -(-len(self.train_ids) // (self.world.size * cfg.batch_size * self.block_size))
        return max(1, -(-epochs * per_epoch // cfg.grad_accum))

    def _loss_and_grads(self, batch_rng, wanted, micro):
        """This rank's share of one micro-batch: (mean loss, grads (None: a float16 overflow), tokens
        processed (padding included), targets scored), or (0, None, 0, 0) for an empty share (an
        epoch's last batch). The micro-batch is random windows (lm) or the next examples, ranks x
        batch_size rows of them, the same on every rank; this rank computes rows self.rows."""
        cfg, model = self.cfg, self.model
        if self.task in ("lm", "sft"):
            if self.task == "lm":
                x, y = D.get_batch(self.train_ids, self.world.size * cfg.batch_size, self.block_size, batch_rng,
                                   rows=self.rows)
            else:
                x, y = (a[self.rows] for a in self.batches.next())
                if not len(x):
                    return 0.0, None, 0, 0
            drop_rng, scored = self._dropout(micro, len(x)), int((y != sft.IGNORE_INDEX).sum())
            if self.adaptive:              # the adaptive softmax as the output layer (adaptive.py)
                x_, y_ = model._ids_and_targets(x, y, -100)
                return (*adaptive.loss_and_grads(model.params, model.config, x_, y_, drop_rng, wanted), x.size, scored)
            if self.teacher is not None:   # distillation (distill.py)
                x_, y_ = model._ids_and_targets(x, y, -100)
                return (*distill.loss_and_grads(model, self.teacher, x_, y_, cfg.distill_temperature, cfg.distill_alpha,
                                                drop_rng, wanted), x.size, scored)
            if self.scaler is not None:    # float16 with loss scaling (amp.py); grads None = overflow
                x_, y_ = model._ids_and_targets(x, y, -100)
                return (*amp.loss_and_grads(model.params, model.config, x_, y_, self.scaler.scale, drop_rng,
                                            model.lora_scale, wanted), x.size, scored)
            return (*model.loss_and_grads(x, y, wanted=wanted, rng=drop_rng), x.size, scored)
        x, lengths, labels = (a[self.rows] for a in self.batches.next())
        if not len(x):
            return 0.0, None, 0, 0
        xp = model.xp
        loss, _, grads = H.classification_loss_and_grads(model.params, model.config, xp.asarray(x), labels,
                                                         lengths=xp.asarray(lengths), rng=self._dropout(micro, len(x)),
                                                         lora_scale=model.lora_scale, wanted=wanted)
        return float(loss), grads, x.size, len(labels)

    def _dropout(self, micro, rows):
        """The dropout random streams of this rank's `rows` rows of micro-batch `micro`: one stream
        per row of the step's global batch, so that a row's masks do not depend on the rank or the
        micro-batch size it is computed in (None: no dropout)."""
        if not self.cfg.dropout:
            return None
        rows = P.my_rows(self.world, self.cfg.batch_size, micro)[:rows]
        return P.RowStreams(self.model.xp, self.cfg.seed, self.step_num, rows)

    def _data_summary(self):
        """What the run trains on, for the first log line (and the truncated examples, counted)."""
        if self.task == "lm":
            return f"{len(self.train_ids):,} train / {len(self.val_ids):,} val tokens"
        n = {k: len(e) for k, e in self.examples.items()}
        labels = f" into {', '.join(self.labels)}" if self.task == "classify" else ""
        return (f"{self.task}{labels}: {n['train']:,} train / {n['val']:,} val examples ({len(self.train_ids):,} / "
                f"{len(self.val_ids):,} tokens), {self.batches.truncated:,} train examples longer than the block "
                f"cut from the left, {len(self.batches):,} batches per epoch")

    def _evaluate_examples(self, split):
        """Mean loss over the first eval_batches batches of `split` in a fixed order (SFT: per
        trained token; classify: per example, and the accuracy into self.accuracy[split])."""
        cfg, model = self.cfg, self.model
        # seed + 1: train's evaluation examples are not the first ones training sees
        batches = sft.ExampleBatches(self.examples[split], self.world.size * cfg.batch_size, self.block_size, cfg.seed + 1)
        total, count, correct = 0.0, 0, 0
        for _ in range(min(cfg.eval_batches, len(batches))):
            batch = [a[self.rows] for a in batches.next()]   # this rank's rows; the sums are all-reduced below
            if not len(batch[0]):
                continue
            if self.task == "sft":
                x, y = batch
                n = int((y != sft.IGNORE_INDEX).sum())
                total, count = total + model.loss(x, y) * n, count + n
                continue
            x, lengths, labels = batch
            xp = model.xp
            logits = H.classify(model.params, model.config, xp.asarray(x), lengths=xp.asarray(lengths),
                                lora_scale=model.lora_scale)
            total += float(L.cross_entropy_forward(logits, xp.asarray(labels))[0]) * len(labels)
            correct += int((asnumpy(logits).argmax(axis=-1) == labels).sum())
            count += len(labels)
        total, count, correct = self.world.sum([total, count, correct])
        if self.task == "classify":
            self.accuracy[split] = correct / count
        return total / count

    def lr(self, step):
        cfg = self.cfg
        min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
        return lr_at(step, cfg.lr, min_lr, cfg.warmup_steps, cfg.steps)

    # --- one step -----------------------------------------------------------------------
    def step(self):
        """One optimisation step; returns a dict of what happened: `step` (counted from 1, as in the
        logs: the number of updates made once this one is done), loss, lr, grad norm, tokens."""
        cfg, model, world = self.cfg, self.model, self.world
        xp = model.xp
        s = self.step_num
        batch_rng = np.random.default_rng([cfg.seed, 0, s])   # the step's global batch, the same on every rank
        wanted = set(self.trainable)
        if self._grads is None:                               # one buffer for every step's gradient
            self._grads = P.GradientSum(self.layout, xp, model.dtype)
        acc = self._grads                                     # targets scored x mean gradient, summed
        acc.reset()
        t0 = time.perf_counter()
        tokens, overflow = 0, False
        for micro in range(cfg.grad_accum):
            loss, g, n, scored = self._loss_and_grads(batch_rng, wanted, micro)
            tokens += n
            overflow |= g is None and n > 0   # float16: a gradient overflowed (amp.py)
            acc.add(g, loss, scored)
        if self.masks is not None:   # pruned weights get no gradient (so no AdamW moment either)
            prune.apply_masks(acc.views, self.masks)
        # the mean over every target of every rank: all-reduced (or, ZeRO-1, this rank's slice of it)
        total, _, grad = acc.reduce(world, scatter=bool(cfg.zero))
        tokens *= world.size
        if not math.isfinite(total):
            return {"step": s + 1, "loss": total}
        lr = self.lr(s)
        if self.scaler is not None and self._skip_on_overflow(bool(world.sum([overflow])[0]), s + 1):  # any rank's
            self.step_num += 1
            return {"step": s + 1, "loss": total, "lr": lr, "grad_norm": None, "tokens": tokens,
                    "seconds": time.perf_counter() - t0, "skipped": True}
        # clipped by the global norm, summed over the flat buffer (ZeRO-1: over every rank's slice)
        norm = P.clip_flat(grad, cfg.grad_clip, world if cfg.zero else None) if cfg.grad_clip else None
        self.opt.step(model.params, grad if cfg.zero else self.layout.unflatten(grad), lr)
        if self.masks is not None:   # and are masked again: exactly zero whatever the update did
            prune.apply_masks(model.params, self.masks)
        synchronize(xp)
        seconds = time.perf_counter() - t0
        self.step_num += 1
        return {"step": s + 1, "loss": total, "lr": lr, "grad_norm": norm, "tokens": tokens, "seconds": seconds}

    def _skip_on_overflow(self, overflow, step):
        """Dynamic loss scaling: True (skip this step) on an overflow, the scale halved and logged."""
        before = self.scaler.scale
        event = self.scaler.update(not overflow)
        if event == "overflow":
            self.log(f"step {step}: inf/NaN gradient at loss scale {before:g}: step skipped, scale now {self.scaler.scale:g}")
        elif event == "grow":
            self.log(f"step {step}: {self.scaler.window} clean steps: loss scale now {self.scaler.scale:g}")
        return overflow

    def evaluate(self, split="val"):
        """Mean loss over the fixed evaluation batches of `split` (no dropout, no gradients)."""
        if self.task != "lm":
            return self._evaluate_examples(split)
        xp, m = self.model.xp, self.model
        # each rank scores its rows of every batch; one all-reduce sums (loss x targets, targets) per batch
        sums = np.array([((float(adaptive.loss(m.params, m.config, xp.asarray(x), xp.asarray(y))) if self.adaptive
                           else m.loss(x, y)) * y.size, y.size) for x, y in self.eval_batches(split)], dtype=np.float64)
        sums = self.world.allreduce(sums)
        return float(np.mean(sums[:, 0] / sums[:, 1]))

    def eval_batches(self, split):
        """The fixed evaluation batches of `split`, the same at every evaluation.

        Drawn again each time from a generator seeded by (seed, 1) for train and (seed, 2) for
        val, so that --eval-batches costs time, not memory."""
        rng = np.random.default_rng([self.cfg.seed, 1 if split == "train" else 2])
        ids = self.train_ids if split == "train" else self.val_ids
        for _ in range(self.cfg.eval_batches):   # global batches; this rank's rows of each
            yield D.get_batch(ids, self.world.size * self.cfg.batch_size, self.block_size, rng, rows=self.rows)

    @property
    def eval_sets(self):
        """{'train': [(x, y), ...], 'val': [...]}: every evaluation batch at once, for inspection."""
        return {split: list(self.eval_batches(split)) for split in ("train", "val")}

    # --- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self):
        """Write checkpoint.safetensors (atomically), then the model for generation (with
        --patience the model files are written at each new best evaluation instead)."""
        opt_arrays, opt_scalars = self.opt.state_dict()  # every rank takes part: ZeRO gathers the moments
        if not self.world.is_root:
            return
        make_folder(self.out, "output folder (--out)")
        arrays = {f"param:{k}": asnumpy(self.model.params[k]) for k in self.trainable}
        arrays.update({k: asnumpy(a) for k, a in opt_arrays.items()})
        meta = {"step": self.step_num, "train_config": json.dumps(asdict(self.cfg)), "optimizer": json.dumps(opt_scalars),
                "model_config": json.dumps(asdict(self.model.config)), "best_val": json.dumps(self.best_val),
                "best_step": json.dumps(self.best_step), "since_best": json.dumps(self.since_best)}
        if self.task != "lm":
            meta["sampler"] = json.dumps(self.batches.state())
        if self.scaler is not None:
            meta["loss_scale"] = json.dumps(self.scaler.state())
        safetensors.save(arrays, self.out / "checkpoint.safetensors", metadata=meta)
        if not self.cfg.patience:  # with early stopping the model files hold the best model instead
            self.save_model_files()

    def save_model_files(self):
        """config.json + model.safetensors (LoRA: merged, and adapters.safetensors) for generation;
        with any parameter-efficient method also adapter/, the adapters alone in peft's folder
        layout (prefix and bottleneck adapters: model.safetensors is the base, and load_model
        attaches adapter/). Rank 0 only."""
        if not self.world.is_root:
            return
        make_folder(self.out, "output folder (--out)")
        cfg = self.cfg
        if cfg.lora_rank:
            lora_mod.save_adapters(self.model, self.out / "adapters.safetensors")
            save_model(lora_mod.merge_lora(self.model), self.out, tokenizer=self.model.tokenizer)
        elif cfg.prefix_tokens or cfg.adapter_size:
            save_model(peft_methods.base_model(self.model), self.out, tokenizer=self.model.tokenizer)
        elif self.adaptive:   # the GPT-2 weights as usual, the output layer beside them
            save_model(GPT2(self.model.config, adaptive.split(self.model.params)[0]), self.out,
                       tokenizer=self.model.tokenizer)
            adaptive.save(self.model.params, self.out)
        else:
            save_model(self.model, self.out)
        if self.masks is not None:   # so that training from this folder keeps them too
            prune.save_masks(self.masks, self.out)
        if cfg.lora_rank or cfg.prefix_tokens or cfg.adapter_size:
            save_adapters(self.model, self.out / "adapter", base_model_name_or_path=cfg.init)

    def _load_checkpoint(self):
        path = self.out / "checkpoint.safetensors"
        if not path.is_file():
            raise PicoGPTError(f"--resume: there is no checkpoint at {path}.")
        _, meta, _ = safetensors.read_header(path)
        try:
            saved = json.loads(meta["train_config"])
            step, opt_scalars = int(meta["step"]), json.loads(meta["optimizer"])
        except (KeyError, ValueError):
            raise PicoGPTError(f"{path} is not a picogpt training checkpoint.") from None
        for k in _MUST_MATCH:
            if saved.get(k, _DEFAULTS[k]) != getattr(self.cfg, k):   # a field an older run did not have: its default
                raise PicoGPTError(f"--resume: the checkpoint was made with {k}={saved.get(k)!r}, this run has "
                                   f"{getattr(self.cfg, k)!r}; rerun with the same settings.")
        arrays = safetensors.load(path)
        xp = self.model.xp
        for k in self.trainable:
            for key in (f"param:{k}", f"m:{k}", f"v:{k}"):
                if key not in arrays or arrays[key].shape != self.model.params[k].shape:
                    raise PicoGPTError(f"{path} lacks {key!r} of shape {self.model.params[k].shape}: "
                                       "it is corrupt or from another model.")
            self.model.params[k] = xp.asarray(np.array(arrays[f"param:{k}"], dtype=self.model.dtype))  # copy: read-only mmap
        if step > self.cfg.steps:
            raise PicoGPTError(f"--resume: the checkpoint in {self.out}/ is at step {step}, past --steps {self.cfg.steps}: "
                               f"give --steps above {step} to train further.")
        self.opt.load_state_dict(arrays, opt_scalars)
        self.step_num = step
        if self.scaler is not None and "loss_scale" in meta:
            self.scaler.load_state(json.loads(meta["loss_scale"]))
        self.best_val = json.loads(meta.get("best_val", "null"))
        self.best_step, self.since_best = json.loads(meta.get("best_step", "null")), json.loads(meta.get("since_best", "0"))
        if self.task != "lm":
            if "sampler" not in meta:
                raise PicoGPTError(f"{path} has no example sampler state: it was not made by a run on examples.")
            self.batches.load_state(json.loads(meta["sampler"]))
        self.log(f"resumed from {path} at step {step}")

    # --- the loop -----------------------------------------------------------------------
    def run(self):
        """Train to cfg.steps; returns the last evaluation {'step', 'train_loss', 'val_loss'}.

        A NaN or infinite loss (training or evaluation) stops the run before anything is saved,
        so the last checkpoint written is the last good one.
        """
        cfg = self.cfg
        save_every = cfg.save_interval or cfg.eval_interval
        if self.step_num >= cfg.steps:
            self.log(f"nothing to do: the run in {self.out}/ already finished its {cfg.steps} steps; "
                     f"give a larger --steps with --resume to train further.")
            return None
        if self.world.is_root:
            self._prepare_out()
        N = self.world.size
        self.log(f"training {self.model!r}\n  {len(self.trainable)} tensors trainable "
                 f"({sum(int(self.model.params[k].size) for k in self.trainable):,} numbers); "
                 f"{self._data_summary()}; "
                 f"{f'{N} ranks x ' if N > 1 else ''}{cfg.batch_size} x {self.block_size} tokens x {cfg.grad_accum} per step")
        if N > 1:
            whole = P.adamw_nbytes(self.model.params, self.trainable)
            self.log(f"  {N} ranks, gradients by {self.world.transport}; AdamW state per rank "
                     + (f"{self.opt.nbytes() / 1e6:,.1f} MB (ZeRO-1: 1/{N} of {whole / 1e6:,.1f} MB)" if cfg.zero
                        else f"{whole / 1e6:,.1f} MB"))
        recent, last_eval = [], None
        # Overflow on the way to a NaN is reported once, as the error below, not as warnings.
        log_file = open(self.out / "log.jsonl", "a") if self.world.is_root else contextlib.nullcontext()
        with log_file as logf, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while self.step_num < cfg.steps:
                info = self.step()
                self._stop_unless_finite(info["loss"], info["step"], "the training loss")
                recent.append(info)
                s = self.step_num
                if s % cfg.log_interval == 0 or s == cfg.steps:
                    self._report(recent, logf)
                    recent = []
                if s % cfg.eval_interval == 0 or s == cfg.steps:
                    last_eval = {"step": s, "train_loss": self.evaluate("train"), "val_loss": self.evaluate("val")}
                    self._stop_unless_finite(last_eval["val_loss"] + last_eval["train_loss"], s, "the evaluation loss")
                    last_eval.update({f"{k}_accuracy": v for k, v in self.accuracy.items()})
                    self._track_best(last_eval)
                    accuracy = "".join(f", {k} accuracy {v:.3f}" for k, v in self.accuracy.items())
                    self.log(f"step {s}: train loss {last_eval['train_loss']:.4f}, val loss {last_eval['val_loss']:.4f}"
                             f"{accuracy}")
                    self._write(logf, {"eval": True, **last_eval})
                stop = bool(cfg.patience) and self.since_best >= cfg.patience
                if s % save_every == 0 or s == cfg.steps or stop:
                    self._stop_unless_finite(sum(float(self.model.params[k].sum()) for k in self.trainable), s, "a parameter")
                    self.save_checkpoint()
                if stop:
                    last_eval["stopped_early"] = True
                    self.log(f"early stop at step {s}: {self.since_best} evaluations without a lower val loss; "
                             f"{self.out}/model.safetensors is the best model (step {self.best_step}, val loss "
                             f"{self.best_val:.4f}); checkpoint.safetensors is step {s}")
                    break
        return last_eval

    def _track_best(self, last_eval):
        """Remember the lowest validation loss; with --patience, write the model when it improves
        and count the evaluations since."""
        if self.best_val is None or last_eval["val_loss"] < self.best_val:
            self.best_val, self.best_step, self.since_best = last_eval["val_loss"], last_eval["step"], 0
            last_eval["best"] = True
            if self.cfg.patience:
                self.save_model_files()
        else:
            self.since_best += 1

    def _stop_unless_finite(self, value, step, what):
        if not math.isfinite(value):
            raise PicoGPTError(
                f"{what} became {'NaN' if value != value else 'infinite'} at step {step}: training stopped. The last good "
                f"checkpoint is kept in {self.out}/; try a lower --lr or a stronger --grad-clip.")

    def _prepare_out(self):
        """Create the output folder, record the config, remove temporary files that a run killed
        while saving left behind (the files under the real names are whole), and make log.jsonl
        hold exactly the steps up to where this run starts (a resumed run redoes the steps after
        its checkpoint, so their old records go)."""
        make_folder(self.out, "output folder (--out)")
        for stale in self.out.glob(".*.tmp-*"):
            stale.unlink()
        write_json(self.out / "train_config.json", asdict(self.cfg))
        log = self.out / "log.jsonl"
        kept = []
        if self.cfg.resume and log.is_file():
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= self.step_num:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut short by a kill
        with atomic_open(log, "w") as f:
            f.writelines(kept)

    def _report(self, recent, logf):
        """The progress line (the loss averaged over the steps since the last line), and one
        log.jsonl record per step with that step's own loss."""
        cfg, s = self.cfg, self.step_num
        loss = float(np.mean([r["loss"] for r in recent]))
        mean = f" (mean of {len(recent)} steps)" if len(recent) > 1 else ""
        secs = sum(r["seconds"] for r in recent)
        tok_s = sum(r["tokens"] for r in recent) / max(secs, 1e-9)
        left = (cfg.steps - s) * secs / len(recent)
        norm = recent[-1]["grad_norm"]
        self.log(f"step {s:>6}/{cfg.steps} | loss {loss:.4f}{mean} | lr {recent[-1]['lr']:.2e} | "
                 f"{'' if norm is None else f'grad norm {norm:.2f} | '}{tok_s:,.0f} tok/s | {clock(left)} left")
        for r in recent:
            self._write(logf, {"step": r["step"], "loss": r["loss"], "lr": r["lr"], "grad_norm": r["grad_norm"],
                               "tokens_per_s": r["tokens"] / max(r["seconds"], 1e-9)})

    @staticmethod
    def _write(logf, record):
        if logf:
            logf.write(json.dumps(record) + "\n")
            logf.flush()


def train(cfg=None, log=print, world=None, **kwargs):
    """Train from a TrainConfig (or its fields as keywords); returns the Trainer when done."""
    cfg = cfg or TrainConfig(**kwargs)
    trainer = Trainer(cfg, log=log, world=world)
    trainer.run()
    return trainer


# --- the command line ---------------------------------------------------------------------

# Every flag: (type argparse converts it with, help). The types are written here, not read from
# TrainConfig's annotations, so that `int | None` there means what it says and nothing else.
_FLAGS = {
    "out": (str, "folder for checkpoints, the final model and log.jsonl (default: out); a new run "
                 "refuses a folder that holds other files"),
    "model": (str, "config preset for --init scratch: gpt2-micro, gpt2-tiny, gpt2-mini, gpt2, ... (default gpt2-tiny)"),
    "n_layer": (int, "layers (--init scratch only; default: the preset's)"),
    "n_head": (int, "attention heads (--init scratch only; default: the preset's)"),
    "n_embd": (int, "width (--init scratch only; default: the preset's)"),
    "bias": (lambda s: _boolean(s, "--bias"), "true (GPT-2's, the default) or false: no biases in the linear layers "
                                              "and layer norms, as nanoGPT's bias=False (--init scratch only)"),
    "gelu": (lambda s: _choice(s, "--gelu", ("tanh", "exact")), "tanh (GPT-2's approximation, the default) or exact "
                                                                  "(the erf form of nanoGPT and torch's nn.GELU; --init scratch only)"),
    "init": (str, "scratch (random init), shakespeare (the bundled model), gpt2 / gpt2-medium / ... "
                  "(OpenAI's weights), or a checkpoint folder"),
    "steps": (int, "optimisation steps in total (default 1000)"),
    "batch_size": (int, "sequences per micro-batch (default 16)"),
    "block_size": (int, "tokens per sequence (default: the model's context)"),
    "grad_accum": (int, "micro-batches per step; their gradients are averaged (default 1)"),
    "lr": (float, "peak learning rate, reached after the warmup (default 6e-4)"),
    "min_lr": (float, "learning rate at the end of the cosine decay, 0 <= min-lr <= lr (default lr / 10)"),
    "warmup_steps": (int, "steps of linear warmup (default 100)"),
    "weight_decay": (float, "AdamW decoupled weight decay of matrices (default 0.1)"),
    "beta1": (float, "AdamW's first-moment averaging factor, 0 <= beta1 < 1 (default 0.9)"),
    "beta2": (float, "AdamW's second-moment averaging factor, 0 <= beta2 < 1 (default 0.95)"),
    "grad_clip": (float, "clip the global gradient norm to this (default 1.0; 0 = off)"),
    "dropout": (float, "dropout rate during training (default 0)"),
    "eval_interval": (int, "measure train/val loss every N steps (default 100)"),
    "eval_batches": (int, "batches per loss measurement (default 20)"),
    "log_interval": (int, "print progress every N steps; its loss is the mean over those N steps, "
                          "log.jsonl has each step's own (default 10)"),
    "save_interval": (int, "write a checkpoint every N steps (default: the eval interval)"),
    "seed": (int, "random seed of the initialisation, batches and dropout (default 0)"),
    "lora_rank": (int, "train rank-r LoRA adapters on the attention and MLP projections, base frozen "
                       "(default 0 = full training)"),
    "lora_alpha": (float, "LoRA scale numerator, > 0: updates are scaled by alpha / rank (default: rank)"),
    "prefix_tokens": (int, "prefix-tuning: train N virtual tokens' keys and values at every layer, base frozen "
                           "(default 0 = off)"),
    "prefix_hidden": (int, "with --prefix-tokens: train them through an MLP of this width (Li & Liang's "
                           "reparameterisation; only its output is saved) (default 0 = directly)"),
    "adapter_size": (int, "train bottleneck adapters of this width in every block, base frozen (default 0 = off)"),
    "adapter_kind": (lambda s: _choice(s, "--adapter-kind", ("houlsby", "pfeiffer")),
                     "houlsby (after attention and MLP, the default) or pfeiffer (after the MLP only)"),
    "val_fraction": (float, "for a text file: the last fraction kept for validation (default 0.05); "
                            "a folder from picogpt.data has its own split"),
    "epochs": (int, "passes over the training data (examples, or a text's tokens), instead of --steps"),
    "prune_masks": (str, "keep these pruning masks (prune_masks.safetensors from python -m picogpt.prune) at zero while "
                         "training (default: the --init folder's, if it has one)"),
    "teacher": (str, "distillation: a teacher model (name or folder) with the same vocabulary"),
    "distill_temperature": (float, "distillation: the softmax temperature T of both models, > 0 (default 2)"),
    "distill_alpha": (float, "distillation: loss = A T^2 KL(teacher || student) + (1 - A) CE, 0 <= A <= 1 (default 0.5)"),
    "loss_scale": (float, "--dtype float16: the initial loss scale (default 65536)"),
    "loss_scale_window": (int, "--dtype float16: double the loss scale after this many clean steps (default 1000)"),
    "adaptive_softmax_cutoffs": (str, "an adaptive softmax output layer (Grave et al. 2017) with these increasing "
                                      "cutoffs, e.g. 2000,10000, instead of GPT-2's tied full softmax (--init scratch; "
                                      "saved beside the model as adaptive_softmax.safetensors)"),
    "patience": (int, "early stopping: stop after N evaluations without a lower validation loss; OUT/model.safetensors "
                      "is then the best model, the checkpoint the last step (default off)"),
    "zero": (int, "with several ranks (mpiexec -n N): 1 shards AdamW's moments over them, ZeRO stage 1 (default 0)"),
}


def _boolean(text, flag):
    """'true'/'false' (also yes/no, 1/0) -> bool, for flags that take a value."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{flag} takes true or false, got {text!r}")
    return value


def _choice(text, flag, choices):
    if text not in choices:
        raise argparse.ArgumentTypeError(f"{flag} takes {' or '.join(choices)}, got {text!r}")
    return text


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m picogpt.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train GPT-2 with picogpt's own backprop: from scratch, from OpenAI's weights, or with LoRA adapters.",
        epilog="examples:\n"
               "  # the bundled Shakespeare model (see picogpt/assets/shakespeare/MODEL_CARD.md)\n"
               "  python -m picogpt.data examples/shakespeare.txt --out data/shakespeare\n"
               "  python -m picogpt.train --data data/shakespeare --model gpt2-tiny --steps 1500 --out out/shakespeare\n"
               "  # nanoGPT's character-level Shakespeare on a CPU (its 4L/4H/128 recipe, bias-free, exact GELU)\n"
               "  python -m picogpt.data examples/shakespeare.txt --tokenizer char --out data/shakespeare_char\n"
               "  python -m picogpt.train --data data/shakespeare_char --out out/shakespeare_char --n-layer 4 --n-head 4 "
               "--n-embd 128 --block-size 64 --batch-size 12 --steps 2000 --lr 1e-3 --min-lr 1e-4 --beta2 0.99 "
               "--bias false --gelu exact --eval-interval 250\n"
               "  # fine-tune GPT-2 124M, fully or with LoRA\n"
               "  python -m picogpt.train --data data/shakespeare --init gpt2 --block-size 256 --lr 3e-5 --steps 200\n"
               "  python -m picogpt.train --data data/shakespeare --init gpt2 --lora-rank 8 --lr 1e-3 --steps 200\n"
               "  # pick up where a stopped run left off\n"
               "  python -m picogpt.train --data data/shakespeare --out out/shakespeare --steps 1500 --resume\n"
               "  # 4 processes of 4 rows each: the same run as --batch-size 16 in one (pip install \".[mpi]\")\n"
               "  mpiexec -n 4 python -m picogpt.train --data data/shakespeare --batch-size 4 --out out/dp")
    p.add_argument("--data", required=True,
                   help="a UTF-8 text file, or a folder made by `python -m picogpt.data` (train.bin, val.bin; or "
                        "examples made with --task sft|classify, whose meta.json sets the task)")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, (typ, text) in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=defaults[name], help=text,
                       metavar={"init": None, "model": None, "bias": "true|false", "gelu": "tanh|exact",
                                "adapter_kind": "houlsby|pfeiffer"}.get(name, name.upper()))
    p.add_argument("--device", choices=["cpu", "gpu"], default=None, help="cpu or gpu (default: $PICOGPT_DEVICE or cpu)")
    p.add_argument("--dtype", choices=["float32", "float64", "float16"], default="float32",
                   help="float32 (default), float64, or float16: mixed precision with float32 master weights and "
                        "dynamic loss scaling (picogpt/amp.py)")
    p.add_argument("--tf32", action="store_true", help="GPU only: let float32 matmuls use TF32 tensor cores")
    p.add_argument("--bitfit", action="store_true", help="train only the biases (BitFit), base frozen")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.safetensors (rerun the same command with --resume)")
    p.set_defaults(steps=None)   # so that --steps and --epochs given together can be refused
    return p


def main(argv=None):
    return run_command(_train_command, build_parser().parse_args(argv),
                       interrupted="interrupted: rerun the same command with --resume to continue from the last checkpoint.")


def _train_command(args):
    if args.steps is not None and args.epochs is not None:
        raise PicoGPTError("give --steps or --epochs, not both: --epochs N sets the steps to N passes over the data.")
    if args.steps is None:
        del args.steps   # TrainConfig's default
    world = P.world()  # this process alone, or every rank of an mpiexec job
    with P.loud_failure(world):
        cfg = TrainConfig(**vars(args))
        trainer = Trainer(cfg, world=world)
        last = trainer.run()
    if last and world.is_root:
        use = {"lm": f'python -m picogpt.generate "..." --model {cfg.out}',
               "sft": f"python -m picogpt.chat --model {cfg.out}",
               "classify": f"python -m picogpt.eval --task classify --model {cfg.out} --data {cfg.data}"}[trainer.task]
        best = f"; the model is the best one, step {trainer.best_step}" if cfg.patience else ""
        print(f"done: step {last['step']}, train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f}{best}; "
              f"model in {cfg.out}/ ({use})")


if __name__ == "__main__":
    sys.exit(main())
