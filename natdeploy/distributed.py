"""The one seam to torch.distributed: the process's place in a run, its device and precision, and collectives.

Training and evaluation ask this module for their shard and call its collectives; nothing below it knows how many
processes there are. With one process (the default, also under plain ``python``) every helper is a cheap local
no-op, so results are exactly those of a single-process run.

Processes are started by ``torchrun`` (or anything that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT). The backend is NCCL on GPUs and gloo on CPU. Plain torch.distributed is enough here: the training
loop needs one gradient all-reduce per step, BN statistics sums, and object gathers, so a layer such as Lightning
Fabric or Accelerate would add a dependency without removing code.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from natdeploy.data import shard_bounds
from natdeploy.errors import NatDeployError

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
BATCH_NORMS = ("local", "sync")
DEFAULT_TIMEOUT_S = 600.0
T = TypeVar("T")


class AcceleratorError(NatDeployError):
    """The requested device or precision is not available on this machine."""


class DistributedError(NatDeployError):
    """A multi-process run failed: ranks disagree, a rank died, or a collective timed out."""


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among ``world_size`` processes, its device and its precision."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    batch_norm: str = "local"  # BN statistics in training with several processes: see train_bn_reducer

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What a run records about where it ran."""
        return {"rank": self.rank, "world_size": self.world_size, "device": str(self.device),
                "precision": self.precision, "batch_norm": self.batch_norm,
                "backend": dist.get_backend() if self.distributed and dist.is_initialized() else None}


LOCAL = Runtime()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer; start the run with torchrun") \
            from None


def _pick_device(accelerator: str, local_rank: int) -> torch.device:
    if accelerator not in ACCELERATORS:
        raise AcceleratorError(f"accelerator {accelerator!r} is unknown; allowed: {', '.join(ACCELERATORS)}")
    if accelerator == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        if accelerator == "auto":
            return torch.device("cpu")
        if torch.version.cuda is None:
            found = f"this torch {torch.__version__} is built without CUDA"
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            found = (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
                     + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""))
        raise AcceleratorError(f"--accelerator cuda needs a usable GPU, but {found}; use --accelerator cpu or auto")
    if local_rank >= count:
        raise AcceleratorError(f"local rank {local_rank} has no GPU of its own: {count} visible; start at most "
                               f"{count} processes per node (torchrun --nproc-per-node {count})")
    return torch.device("cuda", local_rank)


def _check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise AcceleratorError(f"precision {precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise AcceleratorError(f"--precision bf16: the GPU {name} does not support bfloat16; use --precision fp16")
    if precision == "fp16" and device.type == "cpu":
        # fp16 needs a gradient scaler and brings no speed on CPUs; bf16 has fp32's range and runs on CPU.
        raise AcceleratorError("--precision fp16 runs on CUDA only; on CPU use --precision bf16 (or fp32)")


def init_runtime(accelerator: str = "auto", precision: str = "fp32",
                 timeout_s: float = DEFAULT_TIMEOUT_S, batch_norm: str = "local") -> Runtime:
    """The runtime of this process, from torchrun's environment; joins the process group when WORLD_SIZE > 1.

    ``timeout_s`` bounds every collective: when a rank dies or stalls, the others fail with a
    :class:`DistributedError` within that time instead of hanging. ``batch_norm`` (``local`` or ``sync``) is how
    training BN statistics are taken with several processes (see :func:`train_bn_reducer`).
    """
    if batch_norm not in BATCH_NORMS:
        raise DistributedError(f"batch norm mode {batch_norm!r} is unknown; allowed: {', '.join(BATCH_NORMS)}")
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world > 1 else 0)
    if not (0 <= rank < max(world, 1)):
        raise DistributedError(f"RANK={rank} is outside WORLD_SIZE={world}; start the run with torchrun")
    device = _pick_device(accelerator, local_rank)
    _check_precision(precision, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise DistributedError(f"WORLD_SIZE={world} but {' and '.join(missing)} unset; start the run with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=_dt.timedelta(seconds=timeout_s),
                                    device_id=device if device.type == "cuda" else None)
        except Exception as exc:
            raise DistributedError(f"rank {rank}: could not join the {backend} process group of {world} at "
                                   f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s "
                                   f"({_first_line(exc)})") from exc
    runtime = Runtime(rank, world, local_rank, device, precision, batch_norm)
    check_same_config({"precision": precision, "batch_norm": batch_norm}, runtime, what="precision and BN mode")
    log.debug("runtime %s", runtime.describe())
    return runtime


def destroy() -> None:
    """Leave the process group (a no-op with one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


@contextmanager
def peer_failures(what: str, runtime: Runtime | None = None) -> Iterator[None]:
    """Turn a collective's failure inside this block (a peer died, stalled past the timeout, or crashed) into one
    DistributedError naming this rank; with one process the block runs as it is."""
    if not _active(runtime):
        yield
        return
    try:
        yield
    except dist.DistError as exc:  # DistBackendError, DistStoreError ...: not the block's own errors
        raise DistributedError(f"rank {runtime.rank}: {what} failed: another rank died, stalled past the timeout "
                               f"or crashed ({_first_line(exc)}); rerun with --resume to continue from the last "
                               "checkpoint") from exc


def _collective(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except NatDeployError:
        raise
    except Exception as exc:
        rank = dist.get_rank() if dist.is_initialized() else 0
        raise DistributedError(f"rank {rank}: {what} failed: another rank died, stalled past the timeout or "
                               f"crashed ({_first_line(exc)}); rerun with --resume to continue from the last "
                               "checkpoint") from exc


def _active(runtime: Runtime | None) -> bool:
    return runtime is not None and runtime.distributed


# ----- sharding and gathering ------------------------------------------------------------------------------------
def is_main(runtime: Runtime | None = None) -> bool:
    """True on the process that writes (rank 0); always True with one process."""
    return runtime is None or runtime.is_main


def shard_range(n: int, runtime: Runtime | None = None) -> tuple[int, int]:
    """This rank's contiguous part ``[lo, hi)`` of ``n`` items (:func:`natdeploy.data.shard_bounds`: the first
    ``n % world`` ranks get one more, and the parts in rank order give the items in their original order)."""
    return shard_bounds(n, (runtime.rank, runtime.world_size) if runtime else (0, 1))


def shard_sizes(mine: int, runtime: Runtime | None = None, total: int | None = None) -> list[int]:
    """Every rank's number of items in its shard of one global batch, in rank order.

    With ``total`` (the global batch's size, when every rank holds its full :func:`shard_range`) they are computed
    here, with no communication. Without it they are exchanged in one small all-reduce: streamed data skips an
    unreadable file in the shard of the rank that read it, so only the ranks together know the global batch.
    """
    if not _active(runtime):
        return [mine if total is None else total]
    world = runtime.world_size
    if total is not None:
        return [hi - lo for lo, hi in (shard_bounds(total, (r, world)) for r in range(world))]
    counts = torch.zeros(world, dtype=torch.int64, device=runtime.device)
    counts[runtime.rank] = mine
    _collective("exchanging batch sizes", lambda: dist.all_reduce(counts))
    return [int(c) for c in counts.tolist()]


def gather(values: Sequence[float], runtime: Runtime | None = None) -> list[float]:
    """Concatenate every rank's list (each from its :func:`shard_range`) in rank order; the full list on every rank."""
    if not _active(runtime):
        return list(values)
    parts: list[Any] = [None] * runtime.world_size
    _collective("gathering results", lambda: dist.all_gather_object(parts, [float(v) for v in values]))
    return [v for part in parts for v in part]


def broadcast_object(obj: T, runtime: Runtime | None = None, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (a picklable object; ``obj`` is ignored on the other ranks)."""
    if not _active(runtime):
        return obj
    box = [obj]
    _collective("broadcasting an object", lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def config_hash(obj: Any) -> str:
    """A stable hash of a JSON-able configuration (keys sorted; other values by ``str``)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_config(obj: Any, runtime: Runtime | None = None, what: str = "configuration") -> str:
    """Fail fast, on every rank, when the ranks were started with different ``obj`` (arguments, data ...).

    Returns the hash. Ranks that disagree would otherwise train different models or wait in different
    collectives until the timeout.
    """
    digest = config_hash(obj)
    if not _active(runtime):
        return digest
    digests: list[Any] = [None] * runtime.world_size
    _collective(f"comparing the {what}", lambda: dist.all_gather_object(digests, digest))
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise DistributedError(f"rank {runtime.rank}: ranks {odd} were started with a different {what} than rank 0 "
                               f"(hashes {dict(enumerate(digests))}); start every rank with the same arguments "
                               "and data")
    return digest


def barrier(runtime: Runtime | None = None) -> None:
    """Wait for every rank (bounded by the process group's timeout)."""
    if _active(runtime):
        _collective("waiting for the other ranks", dist.barrier)


# ----- gradients and BN statistics --------------------------------------------------------------------------------
def all_reduce_gradients(module: nn.Module, runtime: Runtime | None = None, extras: Sequence[float] = (),
                         bn_statistics: bool = False) -> list[float]:
    """Sum every parameter's gradient over the ranks in ONE flattened all-reduce; returns ``extras`` summed too.

    Callers weight each rank's loss by its share of the global batch, so the sum is the gradient of the global
    batch's mean loss (exact also for uneven shards). Elastic subnets leave parameters unused: a missing gradient
    counts as zeros, and a per-parameter "used" flag travels in the same buffer. A parameter no rank used keeps
    ``grad=None``, so the optimiser skips it exactly as in a one-process run (momentum and weight decay included);
    a parameter that only some ranks used means the ranks trained different subnets, which is an error.
    ``bn_statistics=True`` also does :func:`average_bn_statistics` in the same all-reduce (one collective a step
    instead of two; the same arithmetic).

    Why not DistributedDataParallel(find_unused_parameters=True): the sandwich rule runs 3-5 backward passes per
    step, and DDP reduces per backward (or needs no_sync bookkeeping), walks the autograd graph every forward to
    find unused parameters, and rebroadcasts buffers (BN running statistics) from rank 0. Since every rank trains
    the same subnets from one RNG stream, the unused set is known and identical, so one bucket after the
    accumulation is both cheaper and simpler, and the module keeps its ``forward(x, arch)`` signature.

    Overlapping parts of this all-reduce with the last backward pass (the blocks the last subnet leaves unused)
    was left out: every rank already keeps one of the 2 cores busy computing, and gloo's transfer needs CPU of its
    own, so on CPU there is no idle core to hide it on. The summed buffer becomes the gradients (views into it, no
    copy back) wherever a gradient's layout allows.
    """
    if not _active(runtime):
        return list(extras)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return list(extras)
    ref = params[0]
    dtype = ref.grad.dtype if ref.grad is not None else torch.float32
    bufs = _bn_to_average(module, runtime) if bn_statistics and dtype == torch.float32 else []
    n_grad = sum(p.numel() for p in params)
    n_bn = sum(b.numel() for b in bufs)
    flat = torch.empty(n_grad + len(params) + len(extras) + n_bn, dtype=dtype, device=ref.device)
    offset = 0
    for p in params:
        chunk = flat[offset:offset + p.numel()]
        if p.grad is not None:
            chunk.view_as(p).copy_(p.grad)
        else:
            chunk.zero_()
        offset += p.numel()
    head = [float(p.grad is not None) for p in params] + [float(v) for v in extras]
    flat[n_grad:n_grad + len(head)] = torch.tensor(head, dtype=dtype)
    if bufs:
        torch.cat([b.reshape(-1).float() for b in bufs], out=flat[n_grad + len(head):])
    _collective("averaging gradients", lambda: dist.all_reduce(flat))
    used = flat[n_grad:n_grad + len(params)].round().to(torch.int64).tolist()
    offset = 0
    for p, u in zip(params, used):
        if u not in (0, runtime.world_size):
            raise DistributedError(f"rank {runtime.rank}: a parameter of shape {tuple(p.shape)} got a gradient on "
                                   f"{u} of {runtime.world_size} ranks; the ranks trained different subnets (their "
                                   "seeds or sampling differ)")
        if u:
            chunk = flat[offset:offset + p.numel()].view_as(p)
            if p.grad is None or p.grad.is_contiguous():
                p.grad = chunk
            else:
                p.grad.copy_(chunk)
        offset += p.numel()
    if bufs:
        _set_bn_average(bufs, flat[n_grad + len(head):], runtime.world_size)
    elif bn_statistics:
        average_bn_statistics(module, runtime)
    return flat[n_grad + len(params):n_grad + len(head)].tolist()


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is again a sum over ranks: the gradient of sum_r f_r(S) with S = sum_r s_r
    with respect to each s_r is the sum of every rank's dL_r/dS."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = t.clone()
        _collective("summing BN statistics", lambda: dist.all_reduce(out))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = grad.contiguous().clone()
        _collective("summing BN statistics' gradients", lambda: dist.all_reduce(out))
        return out


def stats_reducer(runtime: Runtime | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An autograd-aware sum over ranks for BN batch statistics (None with one process: plain BatchNorm)."""
    if not _active(runtime):
        return None
    return _SumOverRanks.apply


def train_bn_reducer(runtime: Runtime | None, batch: int,
                     sizes: Sequence[int] | None = None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The BN statistics reducer for one training step on a global batch of ``batch`` (for ``sync_batch_norm``);
    ``sizes``: every rank's shard size (:func:`shard_sizes`), when they are not ``batch``'s :func:`shard_range`.

    ``local`` (the default): each rank normalises its shard with the shard's own statistics, in PyTorch's fused
    BN kernel, as plain DistributedDataParallel does; :func:`average_bn_statistics` then makes the running
    statistics identical once per step. The gradient is that of one process whose BN sees each shard as its own
    batch ("ghost batches"), which differs from the global-batch gradient by BN's per-shard normalisation only.
    ``sync``: every BN layer all-reduces its sums in forward and backward (about 400 small collectives per
    sandwich step), so a step equals the one-process step over the global batch exactly; on 2 CPU processes this
    ran at 0.75x one process, ``local`` at 1.05-1.49x (batch 64; several runs over three sessions,
    benchmarks/ddp_scaling.py and RESULTS.md). A step whose smallest
    shard has fewer than 2 images (a dataset's last, short batch) is synchronised in either mode, since BN cannot
    take statistics of one image at 1x1 spatial size.
    """
    if not _active(runtime):
        return None
    smallest = min(sizes if sizes is not None else shard_sizes(0, runtime, total=batch))
    if runtime.batch_norm == "sync" or smallest < 2:
        return _SumOverRanks.apply
    return None


def _bn_to_average(module: nn.Module, runtime: Runtime | None) -> list[torch.Tensor]:
    """The BN running means and variances :func:`average_bn_statistics` averages (none with one process or in
    ``sync`` mode, whose statistics are already global)."""
    if not _active(runtime) or runtime.batch_norm == "sync":
        return []
    return [b for m in module.modules() if isinstance(m, nn.BatchNorm2d) and m.track_running_stats
            for b in (m.running_mean, m.running_var) if b is not None]


def _set_bn_average(bufs: list[torch.Tensor], summed: torch.Tensor, world: int) -> None:
    summed /= world
    offset = 0
    with torch.no_grad():
        for b in bufs:
            b.copy_(summed[offset:offset + b.numel()].view_as(b))
            offset += b.numel()


def average_bn_statistics(module: nn.Module, runtime: Runtime | None = None) -> None:
    """Average every BN running mean and variance over the ranks in one flattened all-reduce (``local`` BN mode).

    Called once per optimiser step (training does it inside :func:`all_reduce_gradients`), so the running
    statistics are identical on every rank after every step (they are what BN recalibration starts from and what
    a checkpoint saves). With equal shards the mean is the global batch's; the variance is the mean of the shards'
    variances, which leaves out the spread between the shards' means. A no-op with one process and in ``sync``
    mode, whose statistics are already global.
    """
    bufs = _bn_to_average(module, runtime)
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1).float() for b in bufs])
    _collective("averaging BN statistics", lambda: dist.all_reduce(flat))
    _set_bn_average(bufs, flat, runtime.world_size)


# ----- precision ---------------------------------------------------------------------------------------------------
def precision_context(runtime: Runtime | None) -> AbstractContextManager:
    """Autocast for bf16/fp16 on the runtime's device; a no-op context for fp32."""
    if runtime is None or runtime.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if runtime.precision == "bf16" else torch.float16
    return torch.autocast(device_type=runtime.device.type, dtype=dtype)


def grad_scaler(runtime: Runtime | None) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (whose narrow range underflows small gradients); None otherwise."""
    if runtime is None or runtime.precision != "fp16":
        return None
    return torch.amp.GradScaler(runtime.device.type)


def rng_states(runtime: Runtime | None) -> list[dict[str, torch.Tensor]]:
    """Every rank's torch RNG state (CPU, and CUDA when on a GPU), in rank order, on every rank."""
    mine = {"cpu": torch.get_rng_state()}
    if runtime is not None and runtime.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(runtime.device)
    if not _active(runtime):
        return [mine]
    parts: list[Any] = [None] * runtime.world_size
    _collective("gathering RNG states", lambda: dist.all_gather_object(parts, mine))
    return parts
