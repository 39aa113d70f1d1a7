"""The one batched forward path of kielnet: an ensemble of HybridNets over numpy inputs.

:class:`EnsembleRunner` is what prediction (:func:`kielnet.inference.predict.member_predictions`,
:func:`~kielnet.inference.predict.realisation_predictions`), training-time evaluation
(:mod:`kielnet.training.trainer`) and the fusion embeddings
(:func:`kielnet.compute.embeddings.fusion_embeddings`) all use::

    runner = EnsembleRunner(nets, batch_size=256)            # fp32, layout "auto", CPU/CUDA
    preds, embs = runner.predict(prep.spectrum, prep.branches, embeddings=True)
    # preds: (n_members, n_stars, n_labels) float32 in scaled units
    # embs:  one (n_stars, width) float32 array per member (the fusion-head input)

Batches are taken in input order; for each batch every member runs on the same input
tensors (the batch stays in cache across members). Each member is converted once to
the runner's layout (see :mod:`kielnet.compute.plan`); conversions are cached per
network and reused while its weights are unchanged (tensor version counters).

Threads: on the CPU with more than one thread (``threads`` or
``torch.get_num_threads()``) the default ``parallel="auto"`` runs that many worker
threads, each taking whole batches with one intra-op thread (batch sizes are evened
out so that the workers get about the same number of rows); ``parallel="intra"``
keeps torch's intra-op threads instead. Results are the same either way up to float
rounding.

Layouts: ``"auto"`` picks ``"fused"`` on a CPU with oneDNN (the fastest measured
here: ``benchmarks/results/throughput.json``), ``"conv1d"`` on CUDA or where the
fused path cannot run the network (or fails its probe when built:
:func:`kielnet.compute.plan.make_executor`; ``EnsembleRunner.layout`` then says
``"conv1d"``); ``"native"`` runs the module as given (the 1×k
Conv2d training form). Precision ``"bf16"`` runs convolutions and linear layers in
bfloat16 (CPU autocast semantics, fp32 accumulation); the outputs are float32.
Precision ``"fp32"`` is IEEE float32 on CUDA too: torch lets cuDNN run float32
convolutions as TF32 by default (10-bit mantissa), which moved the shipped bundle's
labels by up to 6.5e-3 σ on an H200 and APOGEE Net II's outputs by ~2e-3 relative; the
runner switches TF32 off for its forward passes (:func:`ieee_fp32`), leaving the labels
within 1.3e-5 σ of the CPU's (``benchmarks/results/gpu_check.json``).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from kielnet.compute.plan import LAYOUTS, PRECISIONS, fused_supported, make_executor
from kielnet.data.preprocess import Prepared
from kielnet.errors import UsageError
from kielnet.models.hybrid import HybridNet, split_outputs

__all__ = ["EnsembleRunner", "member_predictions", "decode_outputs", "ieee_fp32", "resolve_device", "resolve_layout",
           "thread_scope", "DEFAULT_BATCH_SIZE", "PARALLEL"]

#: ways several CPU threads share a prediction (see :class:`EnsembleRunner`)
PARALLEL = ("auto", "inter", "intra")

#: stars per forward call when none is given: the dense layers prefer large batches,
#: the fused convolution stack splits them into cache-sized chunks itself
DEFAULT_BATCH_SIZE = 256


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → ``cuda`` if available, else ``cpu``.

    Raises :class:`~kielnet.errors.UsageError` for a name torch does not know
    (``"gpu"``) or a CUDA device this process cannot see, before any work starts.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise UsageError(f"device {str(dev)!r} was asked for, but torch sees "
                             f"{n} CUDA device(s) here (torch {torch.__version__}, CUDA build: "
                             f"{torch.version.cuda or 'no'}); use 'cpu', or leave the device unset")
    elif dev.type != "cpu":
        raise UsageError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


def resolve_layout(layout: str, nets: Sequence[HybridNet], device: torch.device) -> str:
    """The concrete layout ``"auto"`` stands for (see module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout != "auto":
        return layout
    if any(_param_dtype(n) != torch.float32 for n in nets):
        return "native"  # e.g. float64 networks: run as they are, in their own precision
    if device.type == "cpu" and all(fused_supported(n) for n in nets):
        return "fused"
    return "conv1d"


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """On CUDA, float32 convolutions and matrix products without TF32 inside the block
    (``torch.backends.cudnn.allow_tf32`` and ``torch.backends.cuda.matmul.allow_tf32``
    off, restored after; these are process-wide switches). Nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def _param_dtype(net: HybridNet) -> torch.dtype:
    p = next(net.parameters(), None)
    return p.dtype if p is not None else torch.float32


@contextlib.contextmanager
def thread_scope(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (restored after); ``None``
    or 0 keeps the current setting."""
    if not threads:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads (created once per size)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="kielnet-compute")
        return pool


# executors cached per network: {net: {options: (weights key, executor)}}
_CACHE: "weakref.WeakKeyDictionary[HybridNet, dict]" = weakref.WeakKeyDictionary()


def _weights_key(net: HybridNet) -> tuple:
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in net.state_dict(keep_vars=True).values()) \
        + (net.training,)


def _executor(net: HybridNet, layout: str, precision: str, device: torch.device, conv_chunk: int | None,
              threads: int | None):
    opts = (layout, precision, str(device), conv_chunk, threads or torch.get_num_threads())
    key = _weights_key(net)
    per_net = _CACHE.setdefault(net, {})
    hit = per_net.get(opts)
    if hit is not None and hit[0] == key:
        return hit[1]
    ex = make_executor(net, layout=layout, precision=precision, device=device, conv_chunk=conv_chunk,
                       threads=threads)
    if layout != "native":  # "native" is the module itself: nothing to keep
        per_net[opts] = (key, ex)
    return ex


class EnsembleRunner:
    """Batched inference of an ensemble of :class:`HybridNet` members.

    Parameters
    ----------
    nets
        The members (left unmodified; "native" runs them as they are, in eval
        semantics: a member in training mode is copied and put in eval mode).
    batch_size
        Stars per forward call (memory bound of one call).
    precision
        ``"fp32"`` (default) or ``"bf16"``.
    layout
        ``"auto"``, ``"fused"``, ``"conv1d"`` or ``"native"`` (module docstring).
    device
        ``"cpu"``, ``"cuda"`` or ``None`` (CUDA if available).
    threads
        CPU threads while predicting (``None``: ``torch.get_num_threads()``).
    parallel
        How several CPU threads share the work: ``"inter"`` — that many worker threads,
        each running whole batches with one intra-op thread (no per-operator
        synchronisation: near-linear scaling, and robust when other processes share
        the cores, where OpenMP's spinning barriers make ``"intra"`` several times
        slower); ``"intra"`` — torch's own intra-op parallelism inside every operator;
        ``"auto"`` (default) — ``"inter"`` on the CPU with more than one thread.
    conv_chunk
        Rows per pass of the fused convolution stack (default: from the layer sizes,
        :func:`kielnet.compute.plan.conv_chunk_rows`).
    """

    def __init__(self, nets: Sequence[HybridNet], *, batch_size: int = DEFAULT_BATCH_SIZE,
                 precision: str = "fp32", layout: str = "auto", device: str | torch.device | None = None,
                 threads: int | None = None, parallel: str = "auto", conv_chunk: int | None = None) -> None:
        nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
        if not nets:
            raise ValueError("an ensemble needs at least one network")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive number of stars, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if threads is not None and int(threads) < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.nets = nets
        self.batch_size = int(batch_size)
        self.precision = precision
        self.device = resolve_device(device)
        self.layout = resolve_layout(layout, nets, self.device)
        if parallel not in PARALLEL:
            raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
        self.threads = int(threads) if threads else None
        n_threads = self.threads or torch.get_num_threads()
        if parallel == "auto":
            parallel = "inter" if self.device.type == "cpu" and n_threads > 1 else "intra"
        if self.device.type != "cpu":
            parallel = "intra"
        self.parallel = parallel
        #: worker threads of the inter-op mode (1 = the calling thread, intra-op threads)
        self.workers = n_threads if parallel == "inter" else 1
        self.conv_chunk = conv_chunk
        self.n_labels = nets[0].n_labels
        #: output columns per member: n_labels, or 2 n_labels for heteroscedastic members
        self.n_outputs = getattr(nets[0], "n_outputs", self.n_labels)
        if any(getattr(n, "n_outputs", n.n_labels) != self.n_outputs for n in nets):
            raise ValueError("the ensemble's members have different numbers of outputs")
        exec_threads = 1 if parallel == "inter" else n_threads
        self.executors = [_executor(n, self.layout, precision, self.device, conv_chunk, exec_threads) for n in nets]
        if self.layout == "fused" and any(ex.layout != "fused" for ex in self.executors):
            self.layout = "conv1d"  # the fused path failed its probe (kielnet.compute.plan.make_executor)

    def __len__(self) -> int:
        return len(self.nets)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        a = np.ascontiguousarray(a, dtype=np.float32)
        t = torch.from_numpy(a)
        return t if self.device.type == "cpu" else t.to(self.device, non_blocking=True)

    def predict(self, spectrum: np.ndarray | None, branches: Mapping[str, np.ndarray], *,
                embeddings: bool = False, rows: np.ndarray | None = None
                ) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Scaled outputs of every member for every star.

        ``spectrum``: (n, n_pix) or None; ``branches``: branch name → (n, k) arrays;
        ``rows``: if given, only these rows (integer index), gathered batch by batch.
        Returns ``(preds, embs)``: preds (n_members, n, n_outputs) float32 (the scaled
        labels, then log σ for heteroscedastic members: :func:`kielnet.models.hybrid.split_outputs`); embs a list
        of (n, width) float32 arrays, one per member, if ``embeddings`` else None
        (n = ``len(rows)`` when ``rows`` is given).
        """
        if rows is not None:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
        n = _n_rows(spectrum, branches) if rows is None else len(rows)

        def take(a: np.ndarray, s: int, e: int) -> np.ndarray:
            return a[s:e] if rows is None else a[rows[s:e]]

        preds = np.empty((len(self.nets), n, self.n_outputs), dtype=np.float32)
        parts: dict[int, list[np.ndarray]] = {}  # batch start -> each member's embeddings

        def run(s: int, e: int) -> None:
            spec = None if spectrum is None else self._tensor(take(spectrum, s, e))
            br = {name: self._tensor(take(v, s, e)) for name, v in branches.items()}
            embs_b = []
            for m, ex in enumerate(self.executors):
                y, z = ex(spec, [br[name] for name in ex.branch_names], embeddings)
                preds[m, s:e] = y.float().cpu().numpy()
                if embeddings:
                    embs_b.append(z.float().cpu().numpy())
            if embeddings:
                parts[s] = embs_b

        workers = min(self.workers, n)
        if workers <= 1:
            with thread_scope(self.threads), torch.inference_mode(), ieee_fp32(self.device):
                for s in range(0, n, self.batch_size):
                    run(s, min(s + self.batch_size, n))
        else:
            # inter-op: each worker thread runs whole batches with one intra-op thread
            # (no per-operator barriers; robust when other processes share the cores)
            # batches of at most batch_size rows, their number a multiple of the workers
            n_batches = -(-n // self.batch_size)
            n_batches = -(-n_batches // workers) * workers
            bs = -(-n // n_batches)
            starts = list(range(0, n, bs))

            def work(mine: list[int]) -> None:
                if torch.get_num_threads() != 1:
                    torch.set_num_threads(1)  # this worker thread only (OpenMP/MKL settings are per thread)
                with torch.inference_mode():
                    for s in mine:
                        run(s, min(s + bs, n))

            pool = _pool(workers)
            for fut in [pool.submit(work, starts[w::workers]) for w in range(workers)]:
                fut.result()
        if not embeddings:
            return preds, None
        embs = []
        for m in range(len(self.executors)):
            chunks = [parts[s][m] for s in sorted(parts)]
            embs.append(np.concatenate(chunks) if chunks else np.zeros((0, _fusion_width(self.nets[m])), np.float32))
        return preds, embs


def _n_rows(spectrum: np.ndarray | None, branches: Mapping[str, np.ndarray]) -> int:
    if spectrum is not None:
        return len(spectrum)
    for v in branches.values():
        return len(v)
    return 0


def _fusion_width(net: HybridNet) -> int:
    first = net.head[0]
    return int(getattr(first, "in_features", 0))


def decode_outputs(scaled: np.ndarray, n_labels: int, inverse: Callable[[np.ndarray], np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Scaled network outputs (…, n_outputs) → ``(labels, sigma)`` in physical units
    (float64). ``sigma`` (None for a model without σ outputs) is the network's own σ
    mapped through the label transform as half the width of ``inverse(μ ± σ)`` (exact
    for a linear scaling, the delta method to first order for log10 labels)."""
    mean_s, log_s = split_outputs(np.asarray(scaled, dtype=np.float64), n_labels)
    mean = inverse(mean_s)
    if log_s is None:
        return mean, None
    s = np.exp(log_s)
    return mean, 0.5 * np.abs(inverse(mean_s + s) - inverse(mean_s - s))


def member_predictions(nets: list[HybridNet], prep: Prepared, inverse: Callable[[np.ndarray], np.ndarray],
                       batch_size: int = DEFAULT_BATCH_SIZE, embeddings: list | None = None, *,
                       precision: str = "fp32", layout: str = "auto", device: str | None = None,
                       threads: int | None = None, head_sigma: list | None = None) -> np.ndarray:
    """Physical-unit predictions of every member: array (n_members, n_stars, n_labels).

    ``embeddings``: if a list is given, each member's fusion embeddings (n_stars, width)
    are appended to it, captured in the same forward passes (for the fast OOD score).
    ``head_sigma``: if a list is given and the members are heteroscedastic, their own σ
    outputs in physical units, (n_members, n_stars, n_labels), are appended to it.
    ``precision``, ``layout``, ``device`` and ``threads`` select how the networks run
    (:class:`kielnet.compute.EnsembleRunner`; the defaults are the fastest fp32 path).
    """
    runner = EnsembleRunner(nets, batch_size=batch_size, precision=precision, layout=layout, device=device,
                            threads=threads)
    scaled, embs = runner.predict(prep.spectrum, prep.branches, embeddings=embeddings is not None)
    if embeddings is not None:
        embeddings.extend(embs)
    mean, sigma = decode_outputs(scaled, runner.n_labels, inverse)
    if head_sigma is not None and sigma is not None:
        head_sigma.append(sigma)
    return mean
