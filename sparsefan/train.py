"""A thin NumPy trainer over the C forward and backward passes.

Minibatch training with Adam (decoupled weight decay) or SGD with momentum, a learning-rate
schedule, cross-entropy on the aggregate and/or on every output unit, a validation split, early
stopping on validation accuracy, a progress bar, seeded and reproducible.

Labels are int classes or soft targets (probability vectors, cross-entropy against them); a
fraction of every batch can be replaced by the zoom and mosaic transforms of
:mod:`sparsefan.augment`, which bring their own soft targets. Data comes as arrays or as any
iterable of (x, y) batches (a list, a generator, a torch DataLoader).

Reproducibility: the minibatch order of epoch ``e`` comes from ``default_rng([seed, e])``, the
augmentation of step ``t`` from ``default_rng([seed, e, t, 1])``, and the kernels are
bit-identical for any thread count, so a run resumed from its checkpoint (written atomically
after every epoch) ends with exactly the same weights as an uninterrupted run (for an iterable
of batches: if it yields the same batches again). Training never changes the connectivity (the
index tables are read-only arrays). Epochs are reported through :mod:`logging` (logger
``sparsefan.train``, level INFO) unless a ``log`` callable is given.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast, overload

import numpy as np
import numpy.typing as npt

from sparsefan import aggregate as agg
from sparsefan.network import Network, StepResult, Workspace

if TYPE_CHECKING:
    from sparsefan.certify import L0Bound
    from sparsefan.lipschitz import MarginBound

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")


class TrainingError(FloatingPointError):
    """The loss became NaN or Inf."""


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``aggregate_loss``/``unit_loss`` weight the two losses;
    None picks (1, 0) for differentiable aggregates and (0, 1) for the vote.

    Certified L2 training (mean_logits networks): with ``l2_epsilon`` > 0 the aggregate loss is
    the Lipschitz-margin cross-entropy, every non-true mean logit raised by eps * K[y, c], K the
    wiring-weighted bound of :mod:`sparsefan.lipschitz` estimated by ``power_iterations`` steps
    of power iteration per training step; eps rises linearly from 0 over the first
    ``epsilon_ramp`` of the training steps, then stays at ``l2_epsilon``. With
    ``logit_temperature`` t > 0 the loss reads the logits in units of the mean bound k (the
    mean of K over class pairs): CE(t * (S + eps K) / k), free of the logits' scale; a large t
    makes it hinge-like (only margins short of eps count), a small one rewards every margin.

    Certified L0 training (mean_logits networks): with ``l0_radius`` r > 0 every non-true mean
    logit is raised by t * K0[y, c] instead, K0 the certified L0 bound on how far r changed
    pixels move the margin (:class:`sparsefan.certify.L0Bound`: the smaller of the influence
    bound's r largest pixel costs and the chain bound's), t rising from 0 to 1 over
    ``epsilon_ramp``. A zero loss needs every margin to clear the certificate at r pixels.

    Augmentation: ``augment`` names transforms of :mod:`sparsefan.augment` (``"zoom"``,
    ``"mosaic"``; a tuple or a comma-separated string) applied to ``augment_fraction`` of every
    batch, with soft targets; the images' shape is the network's ``input_shape`` (height,
    width), or that of 3-D training arrays."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    aggregate_loss: float | None = None
    unit_loss: float | None = None
    validation: float = 0.0
    patience: int | None = None
    seed: int = 0
    n_threads: int | None = None
    l2_epsilon: float = 0.0
    epsilon_ramp: float = 0.5
    power_iterations: int = 1
    logit_temperature: float = 0.0
    l0_radius: int = 0
    augment: tuple[str, ...] | str = ()
    augment_fraction: float = 0.5

    def __post_init__(self):
        if isinstance(self.augment, str):
            self.augment = tuple(t.strip() for t in self.augment.split(",") if t.strip())
        self.augment = tuple(self.augment)
        from sparsefan.augment import TRANSFORMS

        bad = [t for t in self.augment if t not in TRANSFORMS]
        if bad or len(set(self.augment)) != len(self.augment):
            raise ValueError(f"augment must name distinct transforms of {TRANSFORMS}, got "
                             f"{self.augment!r}")
        if not (0 < self.augment_fraction <= 1):
            raise ValueError(f"augment_fraction must be in (0, 1], got {self.augment_fraction}")
        if self.augment and (self.l2_epsilon or self.l0_radius):
            raise ValueError("augment brings soft targets, which certified training "
                             "(l2_epsilon, l0_radius) does not take")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0.0 <= self.validation < 1.0):
            raise ValueError(f"validation must be a fraction in [0, 1), got {self.validation}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if not (0.0 <= self.momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (self.warmup_epochs >= 0 and math.isfinite(self.warmup_epochs)):
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        for name in ("aggregate_loss", "unit_loss"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be None or a finite weight >= 0, got {v}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience}")
        if not (self.l2_epsilon >= 0 and math.isfinite(self.l2_epsilon)):
            raise ValueError(f"l2_epsilon must be >= 0, got {self.l2_epsilon}")
        if not (0.0 <= self.epsilon_ramp <= 1.0):
            raise ValueError(f"epsilon_ramp must be a fraction in [0, 1], got {self.epsilon_ramp}")
        if not (self.logit_temperature >= 0 and math.isfinite(self.logit_temperature)):
            raise ValueError(f"logit_temperature must be >= 0, got {self.logit_temperature}")
        if (isinstance(self.l0_radius, bool) or not isinstance(self.l0_radius, numbers.Integral)
                or self.l0_radius < 0):
            raise ValueError(f"l0_radius must be an integer >= 0, got {self.l0_radius!r}")
        if self.l0_radius and self.l2_epsilon:
            raise ValueError("l2_epsilon and l0_radius each choose the certified-training "
                             "bound: set one of them")
        if int(self.power_iterations) < 1:
            raise ValueError(f"power_iterations must be >= 1, got {self.power_iterations}")

    def loss_weights(self, aggregate: str) -> tuple[float, float]:
        a, u = self.aggregate_loss, self.unit_loss
        if a is None and u is None:
            a, u = (0.0, 1.0) if aggregate == "vote" else (1.0, 0.0)
        a, u = float(a or 0.0), float(u or 0.0)
        if aggregate == "vote" and a:
            raise ValueError("the vote aggregate is not differentiable: set aggregate_loss=0")
        if a == 0 and u == 0:
            raise ValueError("aggregate_loss and unit_loss are both 0: nothing to train")
        return a, u

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per epoch
    best_epoch: int | None = None
    seconds: float = 0.0
    steps: int = 0


def train_epsilon(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The multiplier of the certified-training bound at ``step``: linear from 0 over the first
    ``epsilon_ramp`` of all steps, then ``l2_epsilon`` (L2 training) or 1 (L0 training: the
    bound already holds the radius)."""
    full = config.l2_epsilon if config.l2_epsilon else 1.0
    ramp = config.epsilon_ramp * config.epochs * steps_per_epoch
    if ramp <= 0:
        return full
    return full * min(1.0, (step + 1) / ramp)


def certified_step(network: Network, bound: MarginBound | L0Bound, x: np.ndarray,
                   y: npt.ArrayLike, eps: float, config: TrainConfig,
                   grads: list[tuple[np.ndarray, np.ndarray]], warm: bool = False,
                   workspace: Workspace | None = None) -> StepResult:
    """One step of certified training: the margin loss with offsets eps * K, K the bound
    ``bound`` (a :class:`sparsefan.lipschitz.MarginBound` for L2, eps the radius, or a
    :class:`sparsefan.certify.L0Bound`, eps the ramp), its gradient through the logits (the C
    backward pass) and through the bound accumulated into ``grads``. ``workspace``: as in
    :meth:`Network.loss_and_grad`."""
    K = bound.value(warm=warm)
    scale, kappa = 1.0, None
    if config.logit_temperature:  # logits in units of the mean bound
        kappa = K[~np.eye(len(K), dtype=bool)].mean()
        scale = config.logit_temperature / kappa
    aw, _ = config.loss_weights(network.aggregate)
    r = network.loss_and_grad(x, y, aw, 0.0, config.n_threads, grads, offsets=eps * K,
                              scale=scale, workspace=workspace)
    dK = eps * cast(np.ndarray, r.d_offsets)  # set: offsets were given
    if kappa is not None:  # through scale = t / mean(K)
        off = ~np.eye(len(K), dtype=bool)
        dK[off] -= cast(float, r.d_scale) * scale / kappa / off.sum()
    bound.backward(dK, grads)
    return r


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    total = config.epochs * steps_per_epoch
    warm = config.warmup_epochs * steps_per_epoch
    if warm and step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        t = (step - warm) / max(1.0, total - warm)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    # step: divide by 10 at 50% and 75% of training
    frac = step / max(1, total)
    return config.lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))


class Optimizer:
    """Adam (with decoupled weight decay, on weights only) or SGD with momentum (weight decay
    as an L2 term on weights). State: one or two buffers per parameter and the step count."""

    def __init__(self, network: Network, config: TrainConfig) -> None:
        self.config = config
        self.layers = list(network.layers)
        n = 2 if config.optimizer == "adam" else 1
        # per parameter, weight then bias of each layer: its buffers
        self.state = [[np.zeros_like(p) for _ in range(n)]
                      for layer in self.layers for p in (layer.weight, layer.bias)]
        self.t = 0

    def step(self, grads: Sequence[tuple[np.ndarray, np.ndarray]], lr: float) -> None:
        self.t += 1
        for i, (layer, (gw, gb)) in enumerate(zip(self.layers, grads)):
            with layer.edit() as (w, b):  # in place: the layer keeps its arrays and plan
                self._update(w, gw, self.state[2 * i], lr, decay=True)
                self._update(b, gb, self.state[2 * i + 1], lr, decay=False)

    def _update(self, p, g, st, lr, decay):
        cfg = self.config
        if cfg.optimizer == "adam":
            m, v = st
            b1, b2, eps = 0.9, 0.999, 1e-8
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            if decay and cfg.weight_decay:
                p -= np.float32(lr * cfg.weight_decay) * p
            mhat = m / (1 - b1 ** self.t)
            vhat = v / (1 - b2 ** self.t)
            # p -= lr * mhat / (sqrt(vhat) + eps), in place: two temporaries, not five
            mhat *= lr
            np.sqrt(vhat, out=vhat)
            vhat += eps
            mhat /= vhat
            p -= mhat
        else:
            (buf,) = st
            if decay and cfg.weight_decay:
                g = g + np.float32(cfg.weight_decay) * p
            buf *= np.float32(cfg.momentum)
            buf += g
            p -= np.float32(lr) * buf


def evaluate(network: Network, x: np.ndarray, y: np.ndarray, n_threads: int | None = None,
             batch_size: int = 2048) -> tuple[float, float]:
    """Accuracy and mean aggregate cross-entropy (or vote error proxy) on (x, y); y int labels or
    soft targets (an example counts as correct when the prediction is its most likely class)."""
    correct = 0
    loss = 0.0
    for s in range(0, len(x), batch_size):
        Z = network.unit_logits(x[s:s + batch_size], n_threads)
        yb = y[s:s + batch_size]
        truth = yb.argmax(axis=1) if agg.is_soft(yb) else yb
        correct += int((agg.scores(Z, network.aggregate).argmax(axis=1) == truth).sum())
        if network.aggregate != "vote":
            loss += agg.aggregate_loss(Z, yb, network.aggregate)[0] * len(yb)
        else:
            loss += agg.unit_loss(Z, yb)[0] * len(yb)
    return correct / max(1, len(x)), loss / max(1, len(x))


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if fraction <= 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    perm = np.random.default_rng([seed, 2**31 - 1]).permutation(n)
    n_val = max(1, int(round(n * fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def as_float_inputs(x: npt.ArrayLike) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; float arrays -> C-contiguous float32 (no rescaling)."""
    x = np.asarray(x)
    flat = (len(x), math.prod(x.shape[1:])) if x.ndim else (-1,)
    if x.dtype == np.uint8:
        out = x.reshape(flat).astype(np.float32)
        out *= np.float32(1.0 / 255.0)
        return out
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must hold uint8 images or floats, got dtype {x.dtype.name}")
    return np.ascontiguousarray(x.reshape(flat), dtype=np.float32)


class _ArrayBatches:
    """Minibatches of in-memory arrays, in the seeded order of each epoch."""

    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.steps = math.ceil(len(x) / batch_size)

    def epoch(self, e):
        order = np.random.default_rng([self.seed, e]).permutation(len(self.x))
        for s in range(0, len(self.x), self.batch_size):
            idx = order[s:s + self.batch_size]
            yield self.x[idx], self.y[idx]


class _IterableBatches:
    """(x, y) batches from any iterable, iterated once per epoch and checked batch by batch."""

    def __init__(self, batches, network, epochs):
        self.batches, self.network = batches, network
        if iter(batches) is batches and epochs > 1:
            raise ValueError("x is an iterator, which can be read once: give a re-iterable "
                             "(a list, a torch DataLoader) or train one epoch")
        try:
            self.steps = len(batches)
        except TypeError:
            self.steps = None

    def epoch(self, e):
        for i, batch in enumerate(self.batches):
            try:
                xb, yb = batch
            except (TypeError, ValueError):
                raise ValueError(f"batch {i} of x must be an (x, y) pair") from None
            xb = self.network.check_inputs(as_float_inputs(np.asarray(xb)), name=f"x batch {i}")
            yield xb, self.network.check_targets(np.asarray(yb), len(xb), f"y batch {i}")


@overload
def train(network: Network, x: npt.ArrayLike, y: npt.ArrayLike,
          config: TrainConfig | None = None, x_val: npt.ArrayLike | None = None,
          y_val: npt.ArrayLike | None = None,
          checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], object] | None = None) -> TrainResult: ...
@overload
def train(network: Network, x: Iterable[Any], y: None = None,
          config: TrainConfig | None = None, x_val: npt.ArrayLike | None = None,
          y_val: npt.ArrayLike | None = None,
          checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], object] | None = None) -> TrainResult: ...


def train(network: Network, x: Any, y: npt.ArrayLike | None = None,
          config: TrainConfig | None = None, x_val: npt.ArrayLike | None = None,
          y_val: Any = None,
          checkpoint: str | os.PathLike[str] | None = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], object] | None = None) -> TrainResult:
    """Train ``network`` in place; returns a :class:`TrainResult`.

    Data: x (n, ...) uint8 or float with y (n,) int labels or (n, n_classes) soft targets; or
    x an iterable of (x, y) batches with y=None (iterated once per epoch; the learning-rate
    schedule and the certified-training ramp need its ``len``, or ``schedule="constant"``).
    ``validation`` in the config holds out that fraction of (x, y) (seeded) unless x_val/y_val
    are given. With ``patience``, training stops after that many epochs without a better
    validation accuracy, and the best weights are restored. ``checkpoint`` (a path) is written
    atomically after every epoch; ``resume=True`` continues from it if it exists. Each epoch's
    line goes to ``log`` (a callable) if given, else to the ``sparsefan.train`` logger.
    """
    from sparsefan import io as sfio

    if not isinstance(network, Network):
        raise TypeError(f"network must be a sparsefan Network, got {type(network).__name__}")
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    log = logger.info if log is None else log
    aw, uw = config.loss_weights(network.aggregate)
    if checkpoint is not None:  # before any work: a bad path fails now, not after an epoch
        sfio.check_output_path(checkpoint, "checkpoint")
    shape = network.input_shape
    if y is None:
        if isinstance(x, np.ndarray) or not hasattr(x, "__iter__"):
            raise TypeError("y is None: x must then be an iterable of (x, y) batches")
        if config.validation:
            raise ValueError("validation splits arrays: with batches from an iterable, pass "
                             "x_val and y_val")
        data = _IterableBatches(x, network, config.epochs)
        x_val = np.zeros((0, network.n_in), np.float32) if x_val is None else x_val
        y_val = np.zeros(0, np.int64) if y_val is None else y_val
    else:
        if len(shape) != 2 and np.ndim(x) == 3:
            shape = np.shape(x)[1:]
        x = network.check_inputs(as_float_inputs(x))
        y = network.check_targets(y, len(x))
        if x_val is None:
            tr, va = _split(len(x), config.validation, config.seed)
            x_val, y_val = x[va], y[va]
            x, y = x[tr], y[tr]
        data = _ArrayBatches(x, y, config.batch_size, config.seed)
    if x_val is not None:
        x_val = network.check_inputs(as_float_inputs(x_val), name="x_val")
        y_val = network.check_targets(y_val, len(x_val), "y_val")
    has_val = len(cast(np.ndarray, x_val)) > 0
    steps_per_epoch = data.steps
    if steps_per_epoch is None:
        needs = [what for what, on in (
            (f"schedule={config.schedule!r}", config.schedule != "constant"),
            ("warmup_epochs", config.warmup_epochs),
            ("certified training's ramp", (config.l2_epsilon or config.l0_radius)
             and config.epsilon_ramp)) if on]
        if needs:
            raise ValueError(f"x has no len(), which {', '.join(needs)} needs: give batches "
                             f"with a length or use schedule='constant'")
        steps_per_epoch = 1  # unused: the rate is constant
    augmenter = None
    if config.augment:
        from sparsefan.augment import Augmenter

        if len(shape) != 2:
            raise ValueError(f"augment transforms images: the network's input_shape {shape} "
                             f"is not (height, width); pass x as (n, height, width) arrays")
        augmenter = Augmenter(tuple(config.augment), shape, network.n_classes,
                              config.augment_fraction)

    opt = Optimizer(network, config)
    bound = None
    if config.l2_epsilon > 0 or config.l0_radius > 0:
        what = ("certified L2 training (l2_epsilon > 0)" if config.l2_epsilon else
                "certified L0 training (l0_radius > 0)")
        if network.aggregate != "mean_logits":
            raise ValueError(f"{what} needs a mean_logits network, got "
                             f"aggregate={network.aggregate!r}")
        if aw == 0 or uw:
            raise ValueError(f"{what} trains the aggregate loss alone: set unit_loss=0")
        if y is not None and y.ndim == 2:
            raise ValueError(f"{what} needs int labels, not soft targets")
        if config.l2_epsilon:
            from sparsefan.lipschitz import MarginBound

            bound = MarginBound(network, iterations=config.power_iterations, seed=config.seed)
        else:
            from sparsefan.certify import L0Bound

            bound = L0Bound(network, config.l0_radius, iterations=config.power_iterations,
                            seed=config.seed)
        opt.state.append(bound.buffers())  # checkpointed with the optimizer: exact resume
    result = TrainResult()
    start_epoch = 0
    best: Any = None  # (accuracy, epoch, weights)
    if resume and checkpoint is not None:
        state = sfio.load_checkpoint(checkpoint, network, opt, config)
        if state is not None:
            start_epoch = state["epoch"]
            result.history = state["history"]
            result.steps = opt.t
            if state["best"] is not None:
                best = state["best"]
            log(f"resumed from {checkpoint} after epoch {start_epoch}")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs * data.steps if data.steps else None,
                   initial=start_epoch * (data.steps or 0), unit="step", dynamic_ncols=True,
                   leave=False, mininterval=0.5,
                   disable=None)  # None: no bar when stderr is not a terminal
    t0 = time.perf_counter()
    grads = [(np.zeros(l.weight_shape, np.float32), np.zeros(l.bias_shape, np.float32))
             for l in network.layers]
    workspace = Workspace()  # the step's activations and gradients, reused step after step
    stopped = False
    try:
        for epoch in range(start_epoch, config.epochs):
            loss_sum = correct = seen = certified = 0
            for step, (xb, yb) in enumerate(data.epoch(epoch)):
                if augmenter is not None:
                    xb, yb = augmenter(xb, yb, np.random.default_rng([config.seed, epoch, step,
                                                                      1]))
                for gw, gb in grads:
                    gw.fill(0)
                    gb.fill(0)
                if bound is None:
                    r = network.loss_and_grad(xb, yb, aw, uw, config.n_threads, grads,
                                              workspace=workspace)
                else:
                    eps = train_epsilon(config, opt.t, steps_per_epoch)
                    r = certified_step(network, bound, xb, yb, eps, config, grads,
                                       warm=opt.t == 0, workspace=workspace)
                    certified += cast(int, r.certified)  # set by certified_step
                if not math.isfinite(r.loss):
                    raise TrainingError(
                        f"loss is {r.loss} at step {opt.t + 1} (epoch {epoch + 1}); lower the "
                        f"learning rate (lr={config.lr})")
                opt.step(grads, learning_rate(config, opt.t, steps_per_epoch))
                loss_sum += r.loss * len(xb)
                correct += r.correct
                seen += len(xb)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / seen:.4f}")
            if not seen:
                raise ValueError(f"x gave no batches in epoch {epoch + 1}")
            row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen,
                   "seconds": time.perf_counter() - t0}
            if bound is not None:  # margins past eps_t * (the training estimate of K)
                row["train_certified"] = certified / seen
                row["epsilon"] = train_epsilon(config, opt.t - 1, steps_per_epoch)
            if has_val:
                row["val_accuracy"], row["val_loss"] = evaluate(network, cast(np.ndarray, x_val),
                                                                y_val, config.n_threads)
                if best is None or row["val_accuracy"] > best[0]:
                    best = (row["val_accuracy"], epoch + 1,
                            [(l.weight.copy(), l.bias.copy()) for l in network.layers])
            result.history.append(row)
            if config.patience is not None and has_val and epoch + 1 - best[1] >= config.patience:
                stopped = True
            if checkpoint is not None:  # an early stop is final: record it as the last epoch
                sfio.save_checkpoint(checkpoint, network, opt, config,
                                     config.epochs if stopped else epoch + 1, result.history, best)
            log(_epoch_line(row))
            if stopped:
                log(f"early stop: no better validation accuracy for {config.patience} epochs")
                break
    finally:
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - t0
    result.steps = opt.t
    if best is not None:
        result.best_epoch = best[1]
        if config.patience is not None:
            for layer, (w, b) in zip(network.layers, best[2]):
                layer.weight, layer.bias = w, b
    return result


def _epoch_line(row):
    s = (f"epoch {row['epoch']:3d}  loss {row['loss']:.4f}  train acc "
         f"{100 * row['train_accuracy']:.2f}%")
    if "train_certified" in row:
        s += f"  cert@{row['epsilon']:.2f} {100 * row['train_certified']:.2f}%"
    if "val_accuracy" in row:
        s += f"  val acc {100 * row['val_accuracy']:.2f}%  val loss {row['val_loss']:.4f}"
    return s + f"  [{row['seconds']:.0f}s]"
