"""The learner on ``torch.distributed``: one process per rank under ``torchrun``, one job each.

``lastr1 rl`` and ``lastr1 sft`` run unchanged as one process; under ``torchrun`` (``WORLD_SIZE``
and ``RANK`` set) every rank collects or reads its share of the *global* batch, gradients are
averaged over the ranks, and rank 0 alone writes the run directory. This module holds everything
that knows about ranks, so the trainers only call a :class:`DistContext`, whose single-process
instance (:data:`SINGLE`) does no communication and leaves every single-process result unchanged.

Why an explicit all-reduce of gradients instead of ``DistributedDataParallel``: DDP hooks the
wrapped module's ``forward``, but the policy is trained through several methods (``log_probs``,
``sft_outputs``, the frozen KL anchor, the diagnostics' own backward passes) and many of its
parameters get no gradient in a given minibatch (stop heads, the context readout, value head
detached): DDP would need ``find_unused_parameters`` and a wrapper per method. One bucketed
all-reduce after ``backward()`` does the same arithmetic and is easy to read. Each rank scales its
loss by its share of the global minibatch (``n_r · W / N``), so the averaged gradient is the
gradient of the mean loss over the union of the ranks' decisions, exactly as one process on the
union batch would compute it, also when the ranks hold different numbers of decisions (episodes
differ in length).

FSDP2 (``distributed=fsdp2``, Qwen3-VL only) lives in :mod:`lastr1.train.fsdp2`; this context
dispatches to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from lastr1.algos.advantages import whitening

if TYPE_CHECKING:
    from lastr1.rollout.collector import Rollout

Mode = Literal["auto", "none", "ddp", "fsdp2"]
MODES: tuple[str, ...] = ("auto", "none", "ddp", "fsdp2")
# Ranks other than 0 wait while rank 0 evaluates or writes a checkpoint; a LIBERO suite evaluation
# takes hours on CPU, so the default 30-minute collective timeout would kill healthy runs.
TIMEOUT_ENV = "LASTR1_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 240
GRAD_BUCKET = 25_000_000  # elements per gradient all-reduce (DDP's default bucket is 25 MB)

T = TypeVar("T")


def resolve_mode(requested: str, env: Mapping[str, str] | None = None, field: str = "distributed") -> str:
    """``none``, ``ddp`` or ``fsdp2`` for this process; ``auto`` is ``ddp`` under a launcher that
    started more than one process, else ``none``. Mistakes are one-line errors naming ``field``."""
    env = os.environ if env is None else env
    if requested not in MODES:
        raise ValueError(f"{field}={requested!r} must be one of {list(MODES)}")
    launched = "WORLD_SIZE" in env and "RANK" in env
    world = int(env.get("WORLD_SIZE", "1")) if launched else 1
    if requested == "auto":
        return "ddp" if world > 1 else "none"
    if requested == "none" and world > 1:
        raise ValueError(
            f"{field}=none, but torchrun started WORLD_SIZE={world} processes: each would train alone "
            f"into the same out; set {field}=auto (or ddp), or run without torchrun"
        )
    if requested in ("ddp", "fsdp2") and not launched:
        raise ValueError(
            f"{field}={requested} needs the RANK and WORLD_SIZE a launcher sets: run "
            f"`torchrun --nproc-per-node N -m lastr1 ...`, or set {field}=auto for one process"
        )
    return requested


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank seed: ``seed`` itself on rank 0 (so a one-process run draws what it always drew),
    an independent stream from ``(seed, rank)`` elsewhere."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> 1)


@dataclasses.dataclass
class DistContext:
    """This process's place in the run and the collectives the trainers need.

    Every method is a no-op (or the plain single-process computation) when ``world_size`` is 1,
    and every collective must be called by all ranks in the same order.
    """

    mode: str = "none"  # none | ddp | fsdp2
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # gloo | nccl; "" without a process group
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this context created the process group (and destroys it)
    saver: Any = None  # fsdp2: rank 0's unsharded copy of the policy that checkpoints are written from

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes metrics, TensorBoard, evaluations and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp2"

    # ------------------------------------------------------------------ plain collectives

    def _reduce(self, t: torch.Tensor, op: Any = None) -> torch.Tensor:
        """All-reduce a copy of ``t`` (on the backend's device) and return it where ``t`` was."""
        if not self.distributed:
            return t
        buf = t.detach().to(self.device, copy=True)
        dist.all_reduce(buf, op=op or dist.ReduceOp.SUM)
        return buf.to(t.device)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t)

    def sum_int(self, value: int) -> int:
        return int(self._reduce(torch.tensor([value], dtype=torch.int64))[0])

    def agree_min(self, value: int) -> int:
        """The smallest ``value`` over the ranks (e.g. how many minibatches every rank can form)."""
        return int(self._reduce(torch.tensor([value], dtype=torch.int64), dist.ReduceOp.MIN)[0])

    def any(self, flag: bool) -> bool:
        return bool(self._reduce(torch.tensor([int(flag)], dtype=torch.int64))[0] > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    # ------------------------------------------------------------------ rank-0 guards

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on rank 0 only (it may write or delete files) and give every rank its result;
        a ``ValueError``/``OSError`` it raises is raised on every rank, so all ranks stop with the
        same one-line message instead of waiting for rank 0 at the next collective."""
        if not self.distributed:
            return fn(*args, **kwargs)
        result: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                result = ("ok", fn(*args, **kwargs))
            except (ValueError, OSError) as exc:
                result = ("error", str(exc))
                self.broadcast_object(result)
                raise
        result = self.broadcast_object(result)
        if result[0] == "error":
            raise ValueError(result[1])
        return result[1]

    def main_first(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Rank 0 runs ``fn`` first (e.g. fills a cache on disk), then the others (reading it)."""
        if not self.distributed:
            return fn(*args, **kwargs)
        done: list[T] = []
        self.on_main(lambda: done.append(fn(*args, **kwargs)))  # rank 0's error stops every rank
        return done[0] if self.is_main else fn(*args, **kwargs)

    @contextlib.contextmanager
    def main_lock(self, out: str | Path) -> Iterator[None]:
        """Rank 0 holds ``out``'s run lock (:class:`~lastr1.train.run_dir.RunLock`) for the run; the
        other ranks write nothing there and take no lock, but share rank 0's refusal."""
        from lastr1.train.run_dir import RunLock

        lock = RunLock(out)
        self.on_main(lock.acquire)
        try:
            yield
        finally:
            if self.is_main:
                lock.release()

    # ------------------------------------------------------------------ sharing the global batch

    def check_share(self, field: str, total: int, unit: int = 1, unit_why: str = "") -> None:
        """``total`` (a global count) must give every rank the same whole number of ``unit``s."""
        if total % (self.world_size * unit):
            why = f" in whole multiples of {unit_why} = {unit}" if unit > 1 else ""
            fits = [w for w in range(1, total // unit + 1) if total % (w * unit) == 0]
            raise ValueError(
                f"{field}={total} is the global count, split over WORLD_SIZE={self.world_size} processes"
                f"{why}: set {field} to a multiple of {self.world_size * unit}, or launch one of "
                f"{fits} processes (torchrun --nproc-per-node)"
            )

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of a list every rank built identically."""
        per = len(items) // self.world_size
        return list(items[self.rank * per : (self.rank + 1) * per])

    def rank_seed(self, seed: int) -> int:
        return rank_seed(seed, self.rank)

    def shard_batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Generator]:
        """SFT: this rank's share of the global batch ``idx`` and a generator for its augmentation.

        Every rank draws the same ``idx`` from the same ``gen``; one more draw from it seeds the
        rank's own generator, so ``gen`` advances identically everywhere and rank 0's saved state
        resumes every rank. One process keeps using ``gen`` itself (its runs are unchanged)."""
        if not self.distributed:
            return idx, gen
        seed = int(torch.randint(2**62, (1,), generator=gen))
        return idx.tensor_split(self.world_size)[self.rank], torch.Generator().manual_seed(
            rank_seed(seed, self.rank + 1)
        )

    def split(self, perm: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """Minibatches: ``parts`` pieces on every rank (``chunk`` may return fewer; a rank with
        fewer minibatches than the others would leave them waiting in the gradient all-reduce)."""
        return perm.chunk(parts) if not self.distributed else perm.tensor_split(parts)

    # ------------------------------------------------------------------ gradients

    def batch_weight(self, n_local: int, finite: bool) -> tuple[float, bool]:
        """``(n_r · W / N, every rank's loss finite)`` in one all-reduce. Scaling the local mean
        loss by the weight and averaging gradients gives the gradient of the global mean."""
        if not self.distributed:
            return 1.0, finite
        t = self._reduce(torch.tensor([float(n_local), float(not finite)], dtype=torch.float64))
        return n_local * self.world_size / float(t[0]), bool(t[1] == 0)

    def average_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over the ranks, in buckets (ddp; FSDP2 reduces its own gradients).

        A parameter that got no gradient on any rank keeps ``grad=None`` (AdamW then skips it, as
        one process would); one that got a gradient on some rank gets the average everywhere."""
        if not self.distributed or self.sharded:
            return
        params = [p for p in params if p.requires_grad]
        present = self._reduce(torch.tensor([p.grad is not None for p in params], dtype=torch.int64))
        used = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
        for bucket in _buckets(used, GRAD_BUCKET):
            flat = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32)
                    for p in bucket
                ]
            )
            flat = self._reduce(flat) / self.world_size
            offset = 0
            for p in bucket:
                g = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.copy_(g)

    def average_buffer(self, buf: torch.Tensor) -> None:
        """Replace a buffer by its mean over the ranks (in place)."""
        if self.distributed:
            buf.copy_(self._reduce(buf.double()).to(buf.dtype) / self.world_size)

    # ------------------------------------------------------------------ advantages and metrics

    def whitening(
        self, x: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor | None = None, eps: float = 1e-8
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`~lastr1.algos.advantages.whitening` over the union of every rank's batch."""
        if not self.distributed:
            return whitening(x, mask, groups, eps)
        return global_whitening(self, x, mask, groups, eps)

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Rank 0: each metric averaged over the ranks that report it (``*max*`` keys: the maximum);
        other ranks keep their own."""
        gathered = self.gather_objects(metrics)
        if gathered is None or not self.distributed:
            return metrics
        out: dict[str, float] = {}
        for key in dict.fromkeys(k for m in gathered for k in m):
            values = [m[key] for m in gathered if key in m]
            out[key] = max(values) if "max" in key else float(sum(values) / len(values))
        return out

    def gather_rollout(self, roll: Rollout) -> Rollout:
        """Rank 0: every rank's episodes as one rollout for the metrics (``out`` and ``index`` are
        dropped: they are not gathered); other ranks get their own rollout back."""
        if not self.distributed:
            return roll
        light = dataclasses.replace(roll, out=None, frames=[])
        parts = self.gather_objects(light)
        return roll if parts is None else _concat_rollouts(parts)

    # ------------------------------------------------------------------ the model

    def prepare(self, policy: torch.nn.Module) -> torch.nn.Module:
        """Make every rank hold the same model: ddp broadcasts rank 0's weights and buffers (the
        ranks built or loaded the same ones; this makes it a fact), fsdp2 shards the backbone."""
        if self.sharded:
            from lastr1.train import fsdp2

            return fsdp2.shard_policy(self, policy)
        if self.distributed:
            for t in [*policy.parameters(), *policy.buffers()]:
                buf = t.detach().to(self.device, copy=True)
                dist.broadcast(buf, src=0)
                t.data.copy_(buf.to(t.device))
        return policy

    @contextlib.contextmanager
    def gathered(self, policy: torch.nn.Module) -> Iterator[None]:
        """fsdp2: hold the full weights on every rank inside the block, so a rank may run the
        policy a data-dependent number of times (rollouts) or alone (rank 0's evaluation)."""
        if not self.sharded:
            yield
            return
        from lastr1.train import fsdp2

        with fsdp2.gathered(policy):
            yield

    @contextlib.contextmanager
    def for_saving(
        self, policy: torch.nn.Module, opt: torch.optim.Optimizer | None = None
    ) -> Iterator[tuple[torch.nn.Module, Any]]:
        """``(policy, optimizer)`` as rank 0 writes them: themselves, or under fsdp2 an unsharded
        copy with the full weights and an object whose ``state_dict()`` is the full optimizer state
        in the one-process layout (collectives: every rank must enter)."""
        if not self.sharded:
            yield policy, opt
            return
        from lastr1.train import fsdp2

        yield fsdp2.full_copy(self, policy), (fsdp2.FullOptimizer(policy, opt) if opt else None)

    def load_optimizer(self, policy: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
        """Load a one-process optimizer state dict (every checkpoint holds that layout)."""
        if not self.sharded:
            opt.load_state_dict(state)
            return
        from lastr1.train import fsdp2

        fsdp2.load_optimizer(policy, opt, state)


SINGLE = DistContext()  # one process: no process group, no communication


def init(requested: str = "auto", device: str = "cpu", field: str = "distributed") -> DistContext:
    """The context of this process; under torchrun it joins (or reuses) the default process group,
    gloo for a learner on CPU, NCCL for one on CUDA."""
    mode = resolve_mode(requested, field=field)
    if mode == "none":
        return SINGLE
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but torch sees no CUDA device; use a machine with a GPU or device=cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device == "cuda" else "gloo"
    dev = torch.device("cuda", local) if device == "cuda" else torch.device("cpu")
    if device == "cuda":
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
        dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
    elif dist.get_world_size() != world:
        raise ValueError(f"a process group of {dist.get_world_size()} ranks exists, but WORLD_SIZE={world}")
    return DistContext(mode, rank, world, local, dist.get_backend(), dev, owns)


def teardown(ctx: DistContext, clean: bool = True) -> None:
    """Destroy the process group if this context created it: after a clean run once every rank is
    done (a barrier), then collect it at once. Why the collection: gloo's worker threads hold
    tensors, and a process group left to the interpreter's shutdown frees them without the
    interpreter and aborts the process now and then (``terminate called without an active
    exception``, exit code -6, after the run's work is done)."""
    if ctx.owns_group and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()


@contextlib.contextmanager
def session(
    requested: str = "auto", device: str = "cpu", field: str = "distributed"
) -> Iterator[DistContext]:
    """``with session(cfg.distributed) as ctx:`` -- :func:`init`, then :func:`teardown`."""
    ctx = init(requested, device, field)
    try:
        yield ctx
    except BaseException:
        teardown(ctx, clean=False)  # the others may never reach a barrier
        raise
    teardown(ctx)


class NullLogger:
    """The metrics logger of ranks other than 0: they compute the same rows and write none."""

    def log(self, step: int, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def global_whitening(
    ctx: DistContext,
    x: torch.Tensor,
    mask: torch.Tensor,
    groups: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map of :func:`~lastr1.algos.advantages.whitening` (batch or per-group mean, one
    scale) computed over every rank's entries: the sums and counts are all-reduced (float64), so
    the result does not depend on how the episodes were split over the ranks."""
    m = mask.to(x.dtype)
    if groups is None:
        s = ctx.sum(torch.stack([(x * m).sum(), m.sum()]).double())
        mean = (s[0] / s[1].clamp_min(1.0)).to(x.dtype)
        count = s[1]
    else:
        size = -ctx.agree_min(-(int(groups.max()) + 1 if groups.numel() else 0))  # the largest id + 1
        s = torch.zeros(2, size, dtype=torch.float64)
        s[0].index_add_(0, groups.long(), (x * m).sum(1).double())
        s[1].index_add_(0, groups.long(), m.sum(1).double())
        s = ctx.sum(s)
        per_group = (s[0] / s[1].clamp_min(1.0)).to(x.dtype)
        mean = per_group[groups.long()][:, None].expand_as(x)
        count = s[1].sum()
    var = ctx.sum((((x - mean) * m) ** 2).sum().double()[None])[0] / count.clamp_min(1.0)
    return mean, torch.rsqrt(var + eps).to(x.dtype)


def _buckets(params: list[torch.nn.Parameter], cap: int) -> Iterator[list[torch.nn.Parameter]]:
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and size + p.numel() > cap:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def _concat_rollouts(parts: list[Rollout]) -> Rollout:
    """Stack episodes of light rollouts (no ``out``), padding the decision axis to the longest."""
    t_max = max(p.mask.shape[1] for p in parts)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(parts[0]):
        first = getattr(parts[0], f.name)
        if f.name == "index":  # rows of the per-rank ``out``s, which are not gathered
            values[f.name] = torch.full((sum(len(p.mask) for p in parts), t_max), -1, dtype=torch.long)
        elif isinstance(first, torch.Tensor) and first.ndim == 2:
            values[f.name] = torch.cat(
                [torch.nn.functional.pad(getattr(p, f.name), (0, t_max - p.mask.shape[1])) for p in parts]
            )
        elif isinstance(first, torch.Tensor):
            values[f.name] = torch.cat([getattr(p, f.name) for p in parts])
        else:
            values[f.name] = first
    return type(parts[0])(**values)
