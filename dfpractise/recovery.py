"""Recovery of the pruned network on the tiny set (PRACTISE.md section 4).

``mir`` (default) mimics the teacher's final feature map with an MSE loss: no labels, so any image
source works; the classifier head stays the teacher's. ``kd`` matches softened logits; ``bp`` is
plain cross-entropy on labels; ``none`` leaves the pruned network as it is. The student trains in
train mode (BatchNorm re-estimated on the tiny set), the teacher stays in eval mode.

Methods are registered (``RECOVERY_METHODS``, ``register_recovery``): what the teacher gives
(its features, softened logits, or nothing), a loss of the student against that, its default
learning rate, whether it needs labels and whether it trains the feature extractor only.

Two speed settings, each checked against the plain path in tests: the run's ``precision`` (bf16
autocast where the hardware does bf16 natively, ``dfpractise.precision``) and ``teacher_views``: the
teacher is fixed, so its outputs can be computed once for a pool of ``teacher_views`` augmented
copies of the tiny set, and each step draws from that pool instead of augmenting afresh and running
the teacher (one teacher forward per pooled image instead of one per drawn image).

The loop checkpoints every ``checkpoint_every`` iterations and when interrupted, and resumes from
the checkpoint to the same result as an uninterrupted run (RNG states are saved with it).

Under ``torchrun`` (``dfpractise.distributed``) the student trains in DistributedDataParallel.
Every rank draws the same global batch from the one seeded generator and augments all of it (so
torch's generator advances as in one process), then keeps its slice; each rank's loss is weighted
by its share of the batch, so the averaged gradient is the one-process gradient of the same
global batch. BatchNorm is synchronised (``synchronized_batchnorm``: normalisation and running
statistics over the global batch, as in one process; per-rank BN would re-estimate statistics
on batch / N images, far from the one-process run). The loss and Ctrl-C are agreed on by all
ranks each step, so a NaN or an interrupt stops every rank at the same iteration. Rank 0 alone
reads and writes the checkpoint; what it read reaches every rank.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from synthesizers.files import atomic_write
from synthesizers.registry import Registry
from torch import nn

from . import distributed
from . import precision as precisions
from .augment import mixing
from .config import RecoveryConfig
from .errors import ConfigError, DataError, DivergedError
from .models.adapter import ModelAdapter, adapter_for
from .progress import Progress
from .interrupt import deferred_interrupt



class TeacherOutput(Protocol):
    """What the student learns from, for a batch: the teacher's features, softened logits..."""

    def __call__(self, adapter: ModelAdapter, teacher: nn.Module, x: torch.Tensor,
                 config: RecoveryConfig) -> torch.Tensor: ...


class RecoveryLoss(Protocol):
    """The loss of one batch against ``wanted`` (the teacher's output for ``x``, or None for a method
    without one); ``adapter`` (the teacher's) reads the student's features."""

    def __call__(self, adapter: ModelAdapter, student: nn.Module, x: torch.Tensor, wanted: torch.Tensor | None,
                 target: torch.Tensor | None, config: RecoveryConfig) -> torch.Tensor: ...


@dataclass(frozen=True)
class RecoveryMethod:
    """One way to recover: ``loss`` is None for a method that trains nothing (``none``).

    ``teacher_output`` is computed without gradients, and may be computed once for a pool of
    views (``teacher_views``); None for a method that learns from labels only.
    """

    loss: RecoveryLoss | None
    teacher_output: TeacherOutput | None = None
    default_lr: float = 0.02
    needs_labels: bool = False
    features_only: bool = False  # train the feature extractor only; the head stays the teacher's


POOL_BYTES_MAX = 4 * 1024**3
"""Largest pool of teacher views (inputs and outputs, float32) recovery keeps in memory; a pool
of ``teacher_views`` that would not fit keeps fewer views."""

POOL_VIEWS_MIN = 8
"""Fewest views worth pooling: with fewer, every image would be seen in a handful of fixed crops
for thousands of steps (8 views cost 0.35 points of held-out top-1 against 32 on ResNet-56, see
BENCHMARKS.md "Speed of a run"), so the teacher runs every step instead."""


RECOVERY_METHODS: Registry[RecoveryMethod] = Registry(
    "recovery method", "recovery methods", unknown=ConfigError, invalid=ConfigError
)


def register_recovery(name: str, method: RecoveryMethod) -> RecoveryMethod:
    """Make a recovery method available to recipes and ``--recovery`` by name."""
    return RECOVERY_METHODS.register(name, method)


@dataclass
class RecoveryResult:
    method: str
    iterations: int
    final_loss: float | None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (iteration, mean loss) samples
    resumed_from: int = 0
    seconds: float = 0.0
    precision: str = "fp32"  # what the heavy ops ran in (dfpractise.precision)
    mix: str = "none"  # how tiny-set images were blended (mix_of)


def recover(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    config: RecoveryConfig,
    augment: Callable[[torch.Tensor], torch.Tensor],
    normalize: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    checkpoint: str | Path | None = None,
    adapter: ModelAdapter | None = None,
    precision: str = "fp32",
    description: str = "Recovering",
) -> RecoveryResult:
    """Train ``student`` in place to recover the teacher's behaviour on ``images``.

    ``adapter`` is the teacher's (``adapter_for(teacher)`` when not given): where the features
    are read and which parameters form the head, for the student too (a pruned copy keeps the
    teacher's module names). ``precision``: ``auto``, ``fp32`` or ``bf16`` (``dfpractise.precision``).
    ``description`` names the progress bar (a trial's recovery is not the run's).
    """
    method = config.method
    adapter = adapter or adapter_for(teacher)
    spec = check_settings(config)
    if spec.loss is None or config.iterations == 0:
        return RecoveryResult(method, 0, None)
    if spec.needs_labels and labels is None:
        raise ConfigError(f"{method.upper()} recovery needs labelled images; this tiny set has no labels "
                          f"(use {' or '.join(label_free_methods())})")
    mix_name = mix_of(config)
    mix = mixing(mix_name)
    if mix is not None:
        augment = _then(augment, mix)
    device = torch.device(device)
    channels_last = device.type == "cpu"
    dtype = precisions.resolve(precision, device)
    started = time.perf_counter()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    student.to(device, memory_format=memory_format).train()
    teacher.to(device, memory_format=memory_format).eval()
    teacher_grad = {n: p.requires_grad for n, p in teacher.named_parameters()}
    teacher.requires_grad_(False)
    images = images.to(device)
    labels = labels.to(device) if labels is not None else None
    params = _trainable(adapter, student, spec.features_only)
    lr = config.lr if config.lr is not None else spec.default_lr
    optimizer = torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    milestones = sorted({max(1, int(m * config.iterations)) for m in config.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    result = RecoveryResult(method, config.iterations, None, precision=precisions.name(dtype), mix=mix_name)
    pool = None
    if config.teacher_views and spec.teacher_output is not None:  # drawn before a checkpoint's RNG state returns
        pool = _teacher_pool(adapter, teacher, images, spec.teacher_output, config, augment, normalize, dtype,
                             device, channels_last, progress)
    start = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    state = distributed.on_main(lambda: _read_checkpoint(checkpoint) if checkpoint is not None
                                and checkpoint.exists() else None)
    if state is not None:
        start = _restore(state, checkpoint, student, optimizer, scheduler, generator, result)
        result.resumed_from = start
    loss_fn = spec.loss
    parallel = distributed.active()
    world, rank = distributed.world_size(), distributed.rank()
    window: list[float] = []
    step = None
    try:
        with deferred_interrupt() as interrupted, distributed.synchronized_batchnorm(student, device), \
                (progress or Progress()).task(f"{description} ({method})", total=config.iterations) as task:
            step = _parallel_loss(student, adapter, loss_fn, config, device) if parallel else None
            task.advance(start)
            for iteration in range(start, config.iterations):
                if pool is not None:
                    index = torch.randint(0, len(pool.inputs), (config.batch_size,), generator=generator)
                    x, wanted = pool.inputs[index], pool.outputs[index]
                    index = index % len(images)  # the pool holds view after view of the tiny set
                else:
                    index = torch.randint(0, len(images), (config.batch_size,), generator=generator)
                    x = normalize(augment(images[index]))
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    wanted = None
                target = labels[index] if labels is not None else None
                if parallel:  # every rank drew and augmented the whole batch; each keeps its slice
                    part = torch.arange(config.batch_size).tensor_split(world)[rank].to(x.device)
                    share = len(part) / config.batch_size
                    x, target = x[part], (target[part] if target is not None else None)
                    wanted = wanted[part] if wanted is not None else None
                with precisions.autocast(dtype, device):
                    if wanted is None and spec.teacher_output is not None:
                        with torch.no_grad():
                            wanted = spec.teacher_output(adapter, teacher, x, config)
                    if parallel:
                        loss = step(x, wanted, target) * (share * world)  # DDP averages: this makes it the global mean
                    else:
                        loss = loss_fn(adapter, student, x, wanted, target, config)
                if parallel:  # the loss of the global batch, and whether Ctrl-C reached any rank so far
                    value, stop = distributed.all_reduce_sum([loss.item() / world, float(interrupted())])
                else:
                    value = loss.item()
                if not math.isfinite(value):
                    raise _shared(_diverged(method, iteration + 1, config, value, lr, checkpoint))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                window.append(value)
                task.advance(1, loss=sum(window[-20:]) / len(window[-20:]), lr=scheduler.get_last_lr()[0])
                done = iteration + 1
                if done % 50 == 0 or done == config.iterations:
                    result.losses.append((done, sum(window) / len(window)))
                    window = []
                if not parallel:
                    stop = float(interrupted())
                periodic = config.checkpoint_every and done % config.checkpoint_every == 0
                if checkpoint is not None and (periodic or stop) and _finite(student):
                    _save_checkpoint(checkpoint, done, student, optimizer, scheduler, generator, result)
                if stop:
                    distributed.barrier()  # rank 0's checkpoint is written before any rank leaves
                    raise KeyboardInterrupt
    finally:
        step = None  # DDP's hooks leave the student's parameters with it
        for n, p in teacher.named_parameters():
            p.requires_grad_(teacher_grad[n])
        student.to(memory_format=torch.contiguous_format).eval()
        teacher.to(memory_format=torch.contiguous_format)
    if not _finite(student):  # the last step's update overflowed after a finite loss
        raise _shared(_diverged(method, config.iterations, config, float("nan"), lr, checkpoint, weights=True))
    result.final_loss = result.losses[-1][1] if result.losses else None
    result.seconds = time.perf_counter() - started
    return result


def check_settings(config: RecoveryConfig) -> RecoveryMethod:
    """The method ``config`` names, once its settings are known to go together (said before any work)."""
    spec = RECOVERY_METHODS.get(config.method)
    if config.mix not in ("auto", "none") and spec.teacher_output is None and spec.loss is not None:
        raise ConfigError(f"recovery.mix {config.mix} blends images, and {config.method.upper()} recovery learns "
                          "from their labels, which a blend does not have; use mix none, or "
                          f"{' or '.join(label_free_methods())}")
    return spec


def mix_of(config: RecoveryConfig) -> str:
    """The blending ``config`` asks for; ``auto`` is mixup where the method learns the teacher's
    outputs (chosen on held-out images, BENCHMARKS.md "Recovery settings") and none where it learns
    labels, which a blend does not have."""
    if config.mix != "auto":
        return config.mix
    return "mixup" if RECOVERY_METHODS.get(config.method).teacher_output is not None else "none"


def _then(first: Callable[[torch.Tensor], torch.Tensor],
          second: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: second(first(x))


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _diverged(method: str, iteration: int, config: RecoveryConfig, value: float, lr: float,
              checkpoint: Path | None, weights: bool = False) -> DivergedError:
    """The one message for a recovery that blew up: where, why it probably did, what is kept."""
    what = "the weights became NaN/Inf" if weights else f"the loss became {value}"
    kept = ""
    if checkpoint is not None and checkpoint.exists():
        kept = f"; the last good checkpoint is kept in {checkpoint}"
    return DivergedError(
        f"recovery ({method}) stopped at iteration {iteration} of {config.iterations}: {what} "
        f"(lr {lr:g}); lower recovery.lr and run again{kept}"
    )


def _trainable(adapter: ModelAdapter, student: nn.Module, features_only: bool) -> list[nn.Parameter]:
    """MiR trains the feature extractor only: the head must stay the teacher's."""
    params = adapter.trainable_parameters(student) if features_only else list(student.parameters())
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


def _features(adapter, teacher, x, config) -> torch.Tensor:
    return adapter.features(teacher, x).float()


def _mir_loss(adapter, student, x, wanted, target, config) -> torch.Tensor:
    return F.mse_loss(adapter.features(student, x).float(), wanted)


def _stage_features(adapter, teacher, x, config) -> torch.Tensor:
    """Every stage's output and the feature map, flattened side by side (one row per image), so a
    pool of views keeps them as one tensor."""
    return torch.cat([t.float().flatten(1) for t in adapter.stage_features(teacher, x)], dim=1)


def _mir_stages_loss(adapter, student, x, wanted, target, config) -> torch.Tensor:
    """The sum of the feature MSEs at every stage's output and at the feature map."""
    loss, start = None, 0
    for got in adapter.stage_features(student, x):
        got = got.float().flatten(1)
        term = F.mse_loss(got, wanted[:, start:start + got.shape[1]])
        loss = term if loss is None else loss + term
        start += got.shape[1]
    return loss


def _soft_labels(adapter, teacher, x, config) -> torch.Tensor:
    return F.softmax(teacher(x).float() / config.kd_temperature, dim=1)


def _kd_loss(adapter, student, x, wanted, target, config) -> torch.Tensor:
    t = config.kd_temperature
    return F.kl_div(F.log_softmax(student(x).float() / t, dim=1), wanted, reduction="batchmean") * t * t


def _bp_loss(adapter, student, x, wanted, target, config) -> torch.Tensor:
    return F.cross_entropy(student(x).float(), target)


register_recovery("mir", RecoveryMethod(_mir_loss, _features, default_lr=0.02, features_only=True))
register_recovery("mir-stages", RecoveryMethod(_mir_stages_loss, _stage_features, default_lr=0.02, features_only=True))
register_recovery("kd", RecoveryMethod(_kd_loss, _soft_labels, default_lr=0.02))
register_recovery("bp", RecoveryMethod(_bp_loss, default_lr=0.002, needs_labels=True))
register_recovery("none", RecoveryMethod(None))


def label_free_methods() -> list[str]:
    """Names of the registered methods that train without labels (``none`` aside)."""
    return [n for n in RECOVERY_METHODS.names()
            if RECOVERY_METHODS.get(n).loss is not None and not RECOVERY_METHODS.get(n).needs_labels]


@dataclass
class _TeacherPool:
    """``teacher_views`` augmented copies of the tiny set (view after view) and the teacher's outputs."""

    inputs: torch.Tensor
    outputs: torch.Tensor


def _teacher_pool(adapter: ModelAdapter, teacher: nn.Module, images: torch.Tensor, output: TeacherOutput,
                  config: RecoveryConfig, augment, normalize, dtype: torch.dtype | None, device: torch.device,
                  channels_last: bool, progress: Progress | None) -> _TeacherPool | None:
    """Augment the tiny set ``teacher_views`` times and run the teacher once over all of it.

    Augmentation draws from torch's generator, seeded by ``recover`` just before: the pool is the
    same on every rank and when a resumed run builds it again. Only as many views as fit in
    ``POOL_BYTES_MAX`` are made (said in the log); None, and the teacher runs every step, when fewer
    than ``POOL_VIEWS_MIN`` do.
    """
    progress = progress or Progress()
    chunks = images.split(max(config.batch_size, 256))

    def view_of(chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(augment(chunk))
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with precisions.autocast(dtype, device):
            return x, output(adapter, teacher, x, config).float()

    inputs, outputs = [], []
    views = config.teacher_views
    with torch.no_grad():
        x, y = view_of(chunks[0])
        per_view = (x[0].numel() + y[0].numel()) * 4 * len(images)
        fits = int(POOL_BYTES_MAX // per_view)
        if fits < views:
            enough = fits >= min(views, POOL_VIEWS_MIN)
            progress.log(f"recovery: {views} teacher views of {len(images)} images would need "
                         f"{views * per_view / 1024**3:.1f} GiB; " + (f"keeping {fits}" if enough else
                         f"{fits} fit, too few to draw from for {config.iterations} steps: running the teacher "
                         "every step instead") + f" (at most {POOL_BYTES_MAX / 1024**3:.0f} GiB)")
            views = fits if enough else 0
        if views == 0:
            return None
        with progress.task("Teacher views", total=views) as task:
            for view in range(views):
                for index, chunk in enumerate(chunks):
                    x, y = (x, y) if view == 0 and index == 0 else view_of(chunk)
                    inputs.append(x)
                    outputs.append(y)
                task.advance(1)
    memory_format = torch.channels_last if channels_last and inputs[0].dim() == 4 else torch.contiguous_format
    return _TeacherPool(torch.cat(inputs).contiguous(memory_format=memory_format), torch.cat(outputs))


def _save_checkpoint(path: Path, iteration, student, optimizer, scheduler, generator, result) -> None:
    state = {
        "iteration": iteration,
        "student": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "losses": [list(x) for x in result.losses],
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, read without running code (``weights_only``); refused in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the answer is the same
        raise _unusable(path, err) from None


def _restore(state: dict, path: Path | None, student, optimizer, scheduler, generator, result) -> int:
    """Put a checkpoint's contents back; anything that does not fit (another model's, truncated)
    is refused in one line."""
    try:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        result.losses = [(int(i), float(v)) for i, v in state["losses"]]
        iteration = int(state["iteration"])
    except Exception as err:  # noqa: BLE001 - whatever is wrong with the file, the answer is the same
        raise _shared(_unusable(path, err)) from None
    if not 0 <= iteration <= result.iterations:
        raise _shared(DataError(f"{path} is at iteration {iteration}, outside this recovery's {result.iterations}; "
                                "delete it to restart recovery"))
    return iteration


def _unusable(path: Path | None, err: Exception) -> DataError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataError(f"{path} is not a usable recovery checkpoint ({reason[:160]}); delete it to restart "
                     "recovery from the beginning (the finished phases are kept)")


def _shared(error: Exception) -> Exception:
    """An error every rank raises alike (only rank 0 needs to show it)."""
    if distributed.active():
        error.all_ranks = True  # type: ignore[attr-defined]
    return error


class _LossOf(nn.Module):
    """The student and its loss as one module, for DistributedDataParallel.

    A loss reads the student however it likes (MiR: the features, through the adapter's hooks,
    which stop the forward early; KD: the logits) and DDP sees one forward that returns the loss.
    The teacher stays out of the module tree: DDP has nothing of it to broadcast or reduce.
    """

    def __init__(self, student: nn.Module, adapter: ModelAdapter, loss: RecoveryLoss, config: RecoveryConfig):
        super().__init__()
        self.student = student
        self._rest = (adapter, loss, config)

    def forward(self, x: torch.Tensor, wanted: torch.Tensor | None, target: torch.Tensor | None) -> torch.Tensor:
        adapter, loss, config = self._rest
        return loss(adapter, self.student, x, wanted, target, config)


def _parallel_loss(student, adapter, loss, config, device: torch.device):
    """The loss of one rank's slice, through DDP (gradients averaged over the ranks in backward).

    ``static_graph``: the graph is the same every step, and a loss that leaves trainable
    parameters unused (MiR reading features before the last trainable module) needs no search of
    the graph each step. ``forward_sync_buffers`` off: synchronised BatchNorm keeps the running
    statistics equal on every rank already.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(_LossOf(student, adapter, loss, config), device_ids=ids,
                                   forward_sync_buffers=False, static_graph=True)
