"""Inference executors of one :class:`~kielnet.models.hybrid.HybridNet`.

An executor turns ``(spectrum, [branch tensors])`` into ``(labels, fusion)`` — the
network's scaled outputs and, on request, its fusion-head input (the embedding of
:mod:`kielnet.quality.embedding`) from the same pass. Three forms, all equal to the
network's own forward up to float rounding:

``ModuleExecutor``
    the module itself (``layout="native"``: the 1×k ``Conv2d`` training form) or its
    :meth:`~kielnet.models.hybrid.HybridNet.to_conv1d` copy (``layout="conv1d"``);
    eager PyTorch, any device, bf16 through ``torch.autocast``.
``FusedExecutor``
    ``layout="fused"``, CPU only: every convolution runs as one oneDNN primitive with
    its activation fused (``torch.ops.mkldnn._convolution_pointwise``), weights
    re-ordered once into oneDNN's blocked layout, activations kept channels-last
    (``(batch, 1, length, channels)`` in memory) from the first convolution to the
    flatten, max-pooling as an element-wise maximum of strided views (oneDNN has no
    pooling post-op and ATen's channels-last max-pool is several times slower), eval
    BatchNorm folded into the convolution before it, and the convolution stack run on
    cache-sized row chunks (``conv_chunk``) while the dense layers see the whole batch.
    bf16 is the same graph with bf16 weights (what CPU autocast does: convolutions and
    linear layers in bf16 with fp32 accumulation inside oneDNN).

:func:`make_executor` picks one for a layout, precision and device.

The fused path calls private oneDNN operators (``torch.ops.mkldnn._convolution_pointwise``,
``torch._C._nn.mkldnn_reorder_conv2d_weight``) that a torch upgrade may remove or
change. So :func:`make_executor` checks every fused executor it builds: a small probe
batch (:data:`PROBE_ROWS` rows of fixed pseudo-random inputs) runs through the fused
executor and through the network's own forward (fp32), and where building or running
the fused path raises ``AttributeError``/``RuntimeError``, or its outputs or fusion
vector differ from the plain ones by more than :data:`PROBE_TOLERANCE` of their largest
absolute value, the plain path (``layout="conv1d"``, same precision) is used instead and
a warning is logged (once per process).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kielnet.models.hybrid import HybridNet

__all__ = ["ModuleExecutor", "FusedExecutor", "fused_supported", "bf16_supported", "make_executor", "conv_chunk_rows",
           "probe_fused", "LAYOUTS", "PRECISIONS", "PROBE_ROWS", "PROBE_TOLERANCE"]

log = logging.getLogger(__name__)

#: layouts an executor can take ("auto" is resolved by :func:`resolve_layout`)
LAYOUTS = ("auto", "fused", "conv1d", "native")
#: numeric precisions of inference
PRECISIONS = ("fp32", "bf16")

#: activations oneDNN fuses into a convolution, as (attr, scalars, algorithm)
_FUSABLE = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.SiLU: "swish", nn.Tanh: "tanh"}

#: bytes of activations (largest layer's input + output) one thread's convolution chunk
#: should hold: a few times a 2 MiB L2, the best measured on this project's Xeon
#: (APOGEE Net II: 8 rows per thread; XP: 128); see :func:`conv_chunk_rows`
CONV_CHUNK_BYTES = 5 << 20

#: rows of the probe batch a fused executor is checked on when it is built
PROBE_ROWS = 3
#: largest difference of the fused path from the network's own fp32 forward on the probe
#: batch, as a fraction of the largest absolute output (and fusion) value: float rounding
#: for fp32, bf16's 8-bit mantissa for bf16; a wrong operator (a missing activation, a
#: shifted kernel, wrong weights) is off by order one
PROBE_TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}

_fallback_logged = False  # the fallback warning is logged once per process


def bf16_supported() -> bool:
    """Whether this CPU has oneDNN's bfloat16 kernels (AVX-512 BW/VL/DQ or AVX-NE-CONVERT;
    an AVX2-only CPU has none). Asked of torch's private ``mkldnn`` namespace; where that
    question is missing or fails, the answer is False (the fused bf16 path is then not tried)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.bfloat16 if precision == "bf16" else torch.float32


class ModuleExecutor:
    """Eager forward of a module (see module docstring)."""

    def __init__(self, net: HybridNet, *, precision: str = "fp32", device: torch.device | str = "cpu",
                 layout: str = "native") -> None:
        self.net = net
        self.layout = layout
        self.device = torch.device(device)
        self.precision = precision
        self._dtype = _dtype(precision)
        self.branch_names = list(net.branch_names)
        self.n_labels = net.n_labels
        p = next(net.parameters(), None)
        self._param_dtype = p.dtype if p is not None else torch.float32

    def __call__(self, spectrum: torch.Tensor | None, branches: Sequence[torch.Tensor],
                 fusion: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._param_dtype != torch.float32:  # a float64 (or other) network sees its own dtype
            spectrum = None if spectrum is None else spectrum.to(self._param_dtype)
            branches = [b.to(self._param_dtype) for b in branches]
        if self._dtype == torch.float32:
            z = self.net.fusion(spectrum, branches)
            return self.net.head_outputs(z), (z if fusion else None)
        with torch.autocast(device_type=self.device.type, dtype=self._dtype):
            z = self.net.fusion(spectrum, branches)
            y = self.net.head_outputs(z)
        return y.float(), (z.float() if fusion else None)


# ----------------------------------------------------------------------------- fused
def _activation(mod: nn.Module) -> tuple[str, list, str] | None:
    """oneDNN post-op of an activation module, or None if it has none."""
    for cls, attr in _FUSABLE.items():
        if type(mod) is cls:
            if cls is nn.LeakyReLU:
                return attr, [float(mod.negative_slope)], ""
            if cls is nn.GELU:
                return attr, [], mod.approximate
            return attr, [], ""
    return None


def _conv_geometry(conv: nn.Module) -> tuple[torch.Tensor, int, int] | None:
    """(weight as (out, in, 1, k), left/right padding, kernel) of a Conv1d/Conv2d(1×k)
    with stride 1, dilation 1, one group and symmetric padding; None otherwise."""
    w = conv.weight.detach()
    if w.dim() == 3:
        w = w[:, :, None, :]
    elif w.shape[2] != 1:  # a genuine 2-D kernel
        return None
    k = w.shape[-1]
    if conv.groups != 1 or any(s != 1 for s in conv.stride) or any(d != 1 for d in conv.dilation):
        return None
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        return None
    pad = conv.padding
    if isinstance(pad, str):
        if pad == "valid":
            p = 0
        elif k % 2 == 1:  # "same" with an odd kernel is symmetric
            p = (k - 1) // 2
        else:
            return None
    else:
        if w.dim() == 4 and len(pad) == 2 and pad[0] != 0:
            return None
        p = int(pad[-1])
    return w, p, k


def fused_supported(net: HybridNet) -> bool:
    """Whether :class:`FusedExecutor` can run ``net`` (CPU with oneDNN, and a
    spectrum branch made only of plain convolutions, BatchNorm, activations and
    max-pooling)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if net.spectrum is None:
        return True
    for mod in net.spectrum.conv:
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            if _conv_geometry(mod) is None:
                return False
        elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            ks, st = mod.kernel_size, mod.stride
            ks = ks if isinstance(ks, tuple) else (1, ks)
            st = st if isinstance(st, tuple) else (1, st)
            if (isinstance(mod, nn.MaxPool2d) and ks[0] != 1) or ks != st or mod.padding not in (0, (0, 0)) \
                    or mod.ceil_mode or mod.dilation not in (1, (1, 1)):
                return False
        elif not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout)) \
                and _activation(mod) is None and not isinstance(mod, nn.ELU):
            return False
    return True


def _fold_batchnorm(w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    b0 = b if b is not None else torch.zeros_like(bn.running_mean)
    return w * scale[:, None, None, None], (b0 - bn.running_mean) * scale + shift


def _dense_ops(layers: Sequence[nn.Module], dtype: torch.dtype) -> list:
    """[(weight, bias, activation module or None)] of a Linear(-Dropout)-activation chain."""
    ops: list = []
    for mod in layers:
        if isinstance(mod, nn.Linear):
            ops.append([mod.weight.detach().to(dtype).contiguous(),
                        None if mod.bias is None else mod.bias.detach().to(dtype), None])
        elif isinstance(mod, nn.Dropout) or isinstance(mod, nn.Identity):
            continue
        else:
            if not ops or ops[-1][2] is not None:
                raise ValueError(f"unsupported layer order around {mod}")
            ops[-1][2] = mod
    return ops


def _apply_dense(ops: list, x: torch.Tensor) -> torch.Tensor:
    for w, b, act in ops:
        x = F.linear(x, w, b)
        if act is None:
            continue
        if type(act) is nn.ReLU:
            x = x.relu_()
        elif type(act) is nn.LeakyReLU:
            x = F.leaky_relu(x, act.negative_slope, inplace=True)
        else:
            x = act(x)
    return x


def _max_pool_cl(h: torch.Tensor, k: int) -> torch.Tensor:
    """Max-pool (kernel = stride = k, floor) of a channels-last (B, C, 1, L) tensor
    along L, as the maximum of k strided views; result channels-last (B, C, 1, L // k)."""
    b, c, _, length = h.shape
    lo = length // k
    v = h.permute(0, 2, 3, 1)[:, 0, :lo * k, :].reshape(b, lo, k, c)  # a view: memory is (B, L, C)
    out = torch.maximum(v[:, :, 0, :], v[:, :, 1, :]) if k > 1 else v[:, :, 0, :].clone()
    for j in range(2, k):
        out = torch.maximum(out, v[:, :, j, :], out=out)
    return out.permute(0, 2, 1)[:, :, None, :]


def conv_chunk_rows(net: HybridNet, *, threads: int | None = None, itemsize: int = 4,
                    budget: int = CONV_CHUNK_BYTES) -> int:
    """Rows per pass through the convolution stack so that the largest layer's input
    plus output stays within ``budget`` bytes per thread (at least 1 row per thread,
    a power of two, at most 512)."""
    if net.spectrum is None:
        return 512
    threads = threads or torch.get_num_threads()
    length, ch, peak = net.spectrum.n_pix, 1, 0
    for mod in net.spectrum.conv:
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            geo = _conv_geometry(mod)
            k = mod.weight.shape[-1]
            pad = geo[1] if geo is not None else (k - 1) // 2
            out_len = length + 2 * pad - k + 1
            peak = max(peak, (ch * length + mod.out_channels * out_len) * itemsize)
            length, ch = out_len, mod.out_channels
        elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            ks = mod.kernel_size[-1] if isinstance(mod.kernel_size, tuple) else mod.kernel_size
            length //= ks
    per_thread = max(1, budget // max(peak, 1))
    rows = 1
    while rows * 2 <= per_thread * threads and rows < 512:
        rows *= 2
    return max(rows, threads)


class FusedExecutor:
    """oneDNN-fused CPU forward of a HybridNet (see module docstring)."""

    def __init__(self, net: HybridNet, *, precision: str = "fp32", conv_chunk: int | None = None,
                 threads: int | None = None) -> None:
        if not fused_supported(net):
            raise ValueError("this network cannot run on the fused path (see fused_supported)")
        self.layout = "fused"
        self.precision = precision
        self._dtype = dt = _dtype(precision)
        self.branch_names = list(net.branch_names)
        self.n_labels = net.n_labels
        self.device = torch.device("cpu")
        itemsize = 2 if dt == torch.bfloat16 else 4
        self.conv_chunk = int(conv_chunk or conv_chunk_rows(net, threads=threads, itemsize=itemsize))
        self.conv: list = []
        self.spec_dense: list = []
        self.has_spectrum = net.spectrum is not None
        if net.spectrum is not None:
            mods = [m for m in net.spectrum.conv if not isinstance(m, (nn.Dropout, nn.Identity))]
            i, length = 0, net.spectrum.n_pix
            while i < len(mods):
                mod = mods[i]
                if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                    w, pad, _k = _conv_geometry(mod)
                    b = None if mod.bias is None else mod.bias.detach()
                    if i + 1 < len(mods) and isinstance(mods[i + 1], (nn.BatchNorm1d, nn.BatchNorm2d)):
                        w, b = _fold_batchnorm(w, b, mods[i + 1])
                        i += 1
                    post = _activation(mods[i + 1]) if i + 1 < len(mods) else None
                    if post is not None:
                        i += 1
                    attr, scalars, algo = post or ("none", [], "")
                    w = w.to(dt).contiguous()
                    # oneDNN's weight layout for the input shape it will see (a full chunk)
                    packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                        w.to_mkldnn(), [0, pad], [1, 1], [1, 1], 1, [self.conv_chunk, w.shape[1], 1, length])
                    length = length + 2 * pad - _k + 1
                    self.conv.append(("conv", packed, None if b is None else b.to(dt).contiguous(), [0, pad],
                                      attr, scalars, algo))
                elif isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
                    ks = mod.kernel_size[-1] if isinstance(mod.kernel_size, tuple) else mod.kernel_size
                    self.conv.append(("pool", int(ks)))
                    length //= int(ks)
                else:  # an activation oneDNN cannot fuse (e.g. ELU), applied on its own
                    self.conv.append(("act", mod))
                i += 1
            self.spec_dense = _dense_ops(list(net.spectrum.dense), dt)
        self.branches = {name: _dense_ops(list(net.branches[name].net), dt) for name in self.branch_names}
        self.head = _dense_ops(list(net.head), dt)
        self.head_hidden = self.head_final = self.sigma = None
        if net.sigma_head is not None:  # the last hidden layer feeds both the labels and the σ head
            self.head_hidden = _dense_ops(list(net.head)[:-1], dt)
            self.head_final = _dense_ops([net.head[-1]], dt)
            self.sigma = _dense_ops(list(net.sigma_head), dt)
        self.flat_width = net.spectrum.flat_features if net.spectrum is not None else 0
        self.width = int(net.head[0].in_features) if isinstance(net.head[0], nn.Linear) else 0

    def _conv_stack(self, spec: torch.Tensor) -> torch.Tensor:
        """The convolution stack on (b, n_pix) rows: (b, C, 1, L) in channels-last memory."""
        h = spec[:, None, None, :]  # (B, 1, 1, L): channels-last and contiguous at once
        for op in self.conv:
            kind = op[0]
            if kind == "conv":
                _, w, b, pad, attr, scalars, algo = op
                h = torch.ops.mkldnn._convolution_pointwise(h, w, b, pad, [1, 1], [1, 1], 1, attr, scalars, algo)
            elif kind == "pool":
                h = _max_pool_cl(h, op[1])
            else:
                h = op[1](h)
        return h

    def _flat_into(self, spec: torch.Tensor, out: torch.Tensor) -> None:
        """Flattened (logical channel, position order) conv-stack output of ``spec`` written
        into ``out`` (n, C·L), a view of a larger buffer, chunk by chunk."""
        n, step = spec.shape[0], self.conv_chunk
        for s in range(0, n, step):
            h = self._conv_stack(spec[s:s + step])
            b, c, _, length = h.shape
            out[s:s + b].view(b, c, length).copy_(h[:, :, 0, :])

    def __call__(self, spectrum: torch.Tensor | None, branches: Sequence[torch.Tensor],
                 fusion: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = spectrum.shape[0] if spectrum is not None else branches[0].shape[0]
        z = torch.empty((n, self.width), dtype=self._dtype)  # the fusion vector, filled in place
        col = 0
        if self.has_spectrum:
            spec = spectrum.to(self._dtype).contiguous()
            if self.spec_dense:
                flat = torch.empty((n, self.flat_width), dtype=self._dtype)
                self._flat_into(spec, flat)
                feat = _apply_dense(self.spec_dense, flat)
                z[:, :feat.shape[1]] = feat
                col = feat.shape[1]
            else:
                self._flat_into(spec, z[:, :self.flat_width])
                col = self.flat_width
        for name, x in zip(self.branch_names, branches):
            out = _apply_dense(self.branches[name], x.to(self._dtype))
            z[:, col:col + out.shape[1]] = out
            col += out.shape[1]
        if self.sigma is None:
            y = _apply_dense(self.head, z)
        else:
            hidden = _apply_dense(self.head_hidden, z)
            y = torch.cat([_apply_dense(self.head_final, hidden), _apply_dense(self.sigma, hidden)], dim=1)
        if self._dtype != torch.float32:
            return y.float(), (z.float() if fusion else None)
        return y, (z if fusion else None)


def make_executor(net: HybridNet, *, layout: str, precision: str = "fp32", device: torch.device | str = "cpu",
                  conv_chunk: int | None = None, threads: int | None = None):
    """An executor of ``net`` for a resolved ``layout`` ("fused", "conv1d", "native").

    ``net`` is never modified: "conv1d" converts a copy, and on another device the
    module is copied there. A "fused" executor is checked on a probe batch first
    (:func:`probe_fused`); where it fails, the "conv1d" executor is returned instead
    (its ``layout`` attribute says which one it is) and a warning is logged once. A
    bf16 fused executor is not even built on a CPU without bf16 kernels
    (:func:`bf16_supported`): the same fallback, saying so.
    """
    device = torch.device(device)
    if layout == "fused":
        if device.type != "cpu":
            raise ValueError("layout='fused' runs on the CPU only")
        plain = net.eval() if not net.training else _eval_copy(net)
        if precision == "bf16" and not bf16_supported():
            problem = (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no oneDNN bf16 kernels: "
                       "they need AVX-512 BW/VL/DQ or AVX-NE-CONVERT")
        else:
            try:
                ex = FusedExecutor(plain, precision=precision, conv_chunk=conv_chunk, threads=threads)
                problem = probe_fused(ex, plain)
            except (AttributeError, RuntimeError) as err:  # an operator missing or changed in this torch
                problem = f"{type(err).__name__}: {err}"
        if problem is None:
            return ex
        _log_fallback(problem)
        layout = "conv1d"
    if layout == "conv1d":
        mod = net.to_conv1d() if net.conv_layout == "conv2d" else _copy(net)
    elif layout == "native":
        mod = net
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if mod is net and (net.training or _device_of(net) != device):
        mod = _copy(net)
    mod = mod.eval().to(device)
    return ModuleExecutor(mod, precision=precision, device=device, layout=layout)


def _probe_inputs(net: HybridNet, rows: int = PROBE_ROWS) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Fixed pseudo-random standard-normal inputs of ``net`` (spectrum, branches)."""
    gen = torch.Generator().manual_seed(0)
    spec = None if net.spectrum is None else torch.randn(rows, net.spectrum.n_pix, generator=gen)
    branches = [torch.randn(rows, net.branches[name].net[0].in_features, generator=gen)
                for name in net.branch_names]
    return spec, branches


def probe_fused(ex: FusedExecutor, net: HybridNet) -> str | None:
    """Why the fused executor ``ex`` of the eval-mode ``net`` must not be used, or None.

    Runs the probe batch (:func:`_probe_inputs`) through ``ex`` and through
    :meth:`HybridNet.fusion` / :meth:`HybridNet.head_outputs` in fp32 and compares the
    outputs and the fusion vectors: each may differ by at most
    ``PROBE_TOLERANCE[ex.precision]`` times its largest absolute plain value. Raises
    what the fused operators raise (``AttributeError``, ``RuntimeError``).
    """
    spec, branches = _probe_inputs(net)
    with torch.no_grad():
        z_ref = net.fusion(spec, branches)
        y_ref = net.head_outputs(z_ref)
        y, z = ex(spec, branches, True)
    tol = PROBE_TOLERANCE[ex.precision]
    for name, got, ref in (("outputs", y, y_ref), ("fusion vector", z, z_ref)):
        got, ref = got.double(), ref.double()
        scale = max(float(ref.abs().max()), 1e-6) if ref.numel() else 1.0
        if got.shape != ref.shape or not bool(torch.isfinite(got).all()):
            return f"the fused {name} have shape {tuple(got.shape)} or non-finite values"
        err = float((got - ref).abs().max()) if ref.numel() else 0.0
        if err > tol * scale:
            return (f"the fused {name} differ from the plain forward by {err:.3g} "
                    f"(> {tol:g} x {scale:.3g}) on the probe batch")
    return None


def _log_fallback(problem: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        log.warning("kielnet: the fused oneDNN CPU path is not used (%s, torch %s); running the plain "
                    "PyTorch forward (layout 'conv1d') instead", problem, torch.__version__)


def _copy(net: HybridNet) -> HybridNet:
    import copy

    return copy.deepcopy(net)


def _eval_copy(net: HybridNet) -> HybridNet:
    return _copy(net).eval()


def _device_of(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
