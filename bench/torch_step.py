"""One torch training step (forward, backward, Adam step) of the MNIST networks' fan-in layers:
``sparsefan.torch`` against the torch ways of writing the same layer, in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python bench/torch_step.py \\
        [--batch 128] [--threads 2] [--repeats 11] [--adam fused|foreach|for-loop]
        [--clock wall|cpu] [--architectures direct,hierarchy2,hierarchy3]

The layers of experiments/mnist_results.py's fixed fan-in architectures (direct, hierarchy2,
hierarchy3 of bench/network_latency.py; dense_mlp has no fan-in layer), with random weights,
one at a time and then each whole network (mean-logits cross-entropy). Peers, each an
``nn.Module`` with ordinary parameters and the same ``torch.optim.Adam`` (``--adam``: its
implementation, default the fused CPU one, the fastest; the "Adam ms" column times it alone on
the layer's parameters, which every peer has as many of):

    sparsefan       sparsefan.torch.FanIn.forward_fm (the kernels' layout, as inside a
                    sparsefan.torch.Network); a whole network: sparsefan.torch.from_network
    gather+einsum   h[:, idx] reshaped to (batch, units, k * c_in), einsum with the
                    (units, k * c_in, c_out) weights (the idiom of bench/network_latency.py)
    torch CSR       torch.sparse.mm with the layer as one (n_out * c_out, n_in * c_in) CSR
                    matrix, its values aliasing a dense parameter (MKL)
    sparselab       the same matrix as a SparseLab PaddedCSR and its autograd SpMM

A layer's step is ``y = layer(h); y.backward(dy); opt.step()`` (the input gradient only where a
network needs it: not for a layer that reads the pixels); the peers run in turn within every
repeat (interleaved, so drift on a shared machine hits all of them), and every peer's forward
output is checked against sparsefan's first. Prints medians and the ratio of the fastest
peer's time to sparsefan's.
"""
import argparse
import os
import statistics
import sys
import time
import warnings


def _threads_from_argv(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "2"


if __name__ == "__main__":  # OpenMP and BLAS pools read their size when first loaded
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402
import scipy.sparse  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from network_latency import ARCHITECTURES  # noqa: E402

import sparsefan.torch as sft  # noqa: E402
from sparsefan import _kernels  # noqa: E402

FAN_IN_ARCHITECTURES = ("direct", "hierarchy2", "hierarchy3")


# -- the peers: one layer each, in its own layout ----------------------------------------------

class GatherEinsum(nn.Module):
    """(batch, n_in, c_in) -> (batch, n_out, c_out): gather, then one einsum per layer."""

    layout = "batch"

    def __init__(self, layer):
        super().__init__()
        conn = layer.connectivity
        if conn.k is None:
            raise ValueError("the gather idiom needs a fixed fan-in")
        self.register_buffer("idx", torch.from_numpy(
            conn.indices.astype(np.int64).reshape(conn.n_out, conn.k)))
        self.weight = nn.Parameter(torch.from_numpy(
            layer.weight.reshape(conn.n_out, conn.k * layer.c_in, layer.c_out).copy()))
        self.bias = nn.Parameter(torch.from_numpy(layer.bias.copy()))
        self.relu = _relu(layer)

    def forward(self, h):
        g = h[:, self.idx, :].reshape(h.shape[0], self.idx.shape[0], -1)
        y = torch.einsum("bjk,jko->bjo", g, self.weight) + self.bias
        return torch.relu(y) if self.relu else y


def block_csr(layer):
    """The layer as one CSR matrix of shape (n_out * c_out, n_in * c_in): row j * c_out + o,
    column i * c_in + c, value weight[p, c, o] for connection p = (j reads i)."""
    conn, ci, co = layer.connectivity, layer.c_in, layer.c_out
    p, c, o = np.meshgrid(np.arange(conn.nnz), np.arange(ci), np.arange(co), indexing="ij")
    rows = conn.row_of_connection().astype(np.int64)[p] * co + o
    cols = conn.indices.astype(np.int64)[p] * ci + c
    m = scipy.sparse.csr_array((layer.weight[p, c, o].ravel(), (rows.ravel(), cols.ravel())),
                               shape=(conn.n_out * co, conn.n_in * ci))
    m.sort_indices()
    return m


class TorchCSR(nn.Module):
    """(n_in * c_in, batch) -> (n_out * c_out, batch): torch.sparse.mm on a CSR leaf tensor
    with requires_grad, whose values alias a dense parameter for the optimizer (torch's Adam
    takes no sparse gradients); a hook moves the CSR gradient's values over. (Building the CSR
    tensor from the parameter every step instead makes autograd form the dense weight
    gradient: gigabytes at these shapes.)"""

    layout = "fm"

    def __init__(self, layer):
        super().__init__()
        m = block_csr(layer)
        crow = torch.from_numpy(m.indptr.astype(np.int64))
        col = torch.from_numpy(m.indices.astype(np.int64))
        self.values = nn.Parameter(torch.from_numpy(m.data.astype(np.float32)))
        self.W = torch.sparse_csr_tensor(crow, col, self.values.detach(), m.shape)
        self.W.requires_grad_()
        self.W.register_post_accumulate_grad_hook(self._move_gradient)
        self.bias = nn.Parameter(torch.from_numpy(layer.bias.reshape(-1, 1).copy()))
        self.relu = _relu(layer)

    def _move_gradient(self, W):
        g = W.grad.values()  # the same pattern as W (sparse.mm's gradient is masked to it)
        self.values.grad = g if self.values.grad is None else self.values.grad + g
        W.grad = None

    def forward(self, h):
        y = torch.sparse.mm(self.W, h) + self.bias
        return torch.relu(y) if self.relu else y


class SparseLab(nn.Module):
    """(n_in * c_in, batch) -> (n_out * c_out, batch): SparseLab's PaddedCSR (no padding: the
    wiring is fixed) and its autograd SpMM, the values a parameter aliasing its buffer (as
    sparselab.SparseLinear does)."""

    layout = "fm"

    def __init__(self, layer):
        super().__init__()
        import sparselab
        from sparselab.ops import _SpMMFunction

        m = block_csr(layer)
        csr = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int32)),
                                      torch.from_numpy(m.indices.astype(np.int32)),
                                      torch.from_numpy(m.data.astype(np.float32)), size=m.shape)
        self.W = sparselab.PaddedCSR.from_torch_sparse_csr(csr, padding_ratio=0.0)
        self.fn = _SpMMFunction
        self.values = nn.Parameter(torch.from_numpy(np.asarray(self.W.values)))
        self.bias = nn.Parameter(torch.from_numpy(layer.bias.reshape(-1, 1).copy()))
        self.relu = _relu(layer)

    def forward(self, h):
        y = self.fn.apply(self.values, self.W, h, "simd") + self.bias
        return torch.relu(y) if self.relu else y


class Sparsefan(nn.Module):
    """(n_in, c_in, batch) -> (n_out, c_out, batch): sparsefan.torch.FanIn.forward_fm."""

    layout = "fm"

    def __init__(self, layer):
        super().__init__()
        self.layer = sft.FanIn.from_layer(layer)

    def forward(self, h):
        return self.layer.forward_fm(h)


def _relu(layer):
    if layer.activation not in (None, "relu"):
        raise ValueError(f"activation {layer.activation!r}: the peers here do ReLU or none")
    return layer.activation == "relu"


ADAM = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}
OPTIMIZER = dict(lr=1e-3)  # every peer's torch.optim.Adam arguments (main adds --adam)


def adam(module):
    return torch.optim.Adam(module.parameters(), **OPTIMIZER)


PEERS = {"sparsefan": Sparsefan, "gather+einsum": GatherEinsum, "torch CSR": TorchCSR,
         "sparselab": SparseLab}


class PeerNetwork(nn.Module):
    """A whole network from one peer's layers: x (batch, n_in) -> mean logits (batch, C)."""

    def __init__(self, net, make):
        super().__init__()
        self.layers = nn.ModuleList(make(layer) for layer in net.layers)
        self.layout = self.layers[0].layout
        self.units, self.classes = net.n_units, net.n_classes

    def forward(self, x):
        if self.layout == "batch":
            h = x.unsqueeze(-1)
            for layer in self.layers:
                h = layer(h)
            return h.mean(dim=1)  # (batch, units, C) -> (batch, C)
        h = x.T.contiguous()
        for layer in self.layers:
            h = layer(h)
        return h.reshape(self.units, self.classes, -1).mean(dim=0).T


# -- one step --------------------------------------------------------------------------------

def in_layout(a, layout, flat):
    """a (batch, units, channels) as a tensor in a peer's layout."""
    if layout == "batch":
        return torch.from_numpy(np.ascontiguousarray(a))
    t = np.ascontiguousarray(a.transpose(1, 2, 0))
    return torch.from_numpy(t.reshape(-1, a.shape[0]) if flat else t)


class LayerStep:
    def __init__(self, module, layer, x, dy, input_grad):
        self.module, self.opt = module, adam(module)
        flat = not isinstance(module, Sparsefan)
        self.h = in_layout(x, module.layout, flat).requires_grad_(input_grad)
        self.dy = in_layout(dy, module.layout, flat)
        self.layer = layer

    def output(self):
        with torch.no_grad():
            y = self.module(self.h).numpy()
        if self.module.layout == "batch":
            return y
        return y.reshape(self.layer.n_out, self.layer.c_out, -1).transpose(2, 0, 1)

    def __call__(self):
        self.opt.zero_grad()
        self.module(self.h).backward(self.dy)
        self.opt.step()


class NetworkStep:
    def __init__(self, module, x, y):
        self.module, self.opt = module, adam(module)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def output(self):
        with torch.no_grad():
            return self.module(self.x).numpy()

    def __call__(self):
        self.opt.zero_grad()
        F.cross_entropy(self.module(self.x), self.y).backward()
        self.opt.step()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = [time.perf_counter]  # main sets --clock


def interleaved_medians(steps, repeats):
    """Median seconds of every step, timed in turn within each repeat (after one warm-up)."""
    clock = CLOCK[0]
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = clock()
            step()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def checked(steps, reference):
    """The steps whose forward output matches sparsefan's (others are reported and dropped)."""
    kept = {}
    for name, step in steps.items():
        err = np.abs(step.output() - reference).max() / (np.abs(reference).max() + 1e-30)
        if err > 1e-4:
            print(f"   {name}: skipped (output differs from sparsefan by {err:.1e})")
        else:
            kept[name] = step
    return kept


def report(label, params, medians, adam_seconds=None):
    ours = medians["sparsefan"]
    peers = {k: v for k, v in medians.items() if k != "sparsefan"}
    cells = "".join(f"{medians.get(name, float('nan')) * 1e3:>15.1f}" for name in PEERS)
    fastest = min(peers, key=peers.get) if peers else None
    ratio = f"{peers[fastest] / ours:6.2f}x ({fastest})" if fastest else "-"
    extra = f"{adam_seconds * 1e3:>9.1f}" if adam_seconds is not None else f"{'':>9}"
    print(f"{label:<48}{params:>11,}{extra}{cells}   {ratio}", flush=True)


def adam_alone(module, repeats):
    """The optimizer step alone (gradients already in place): the same for every peer, whose
    parameters count the same."""
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    return interleaved_medians({"adam": adam(module).step}, repeats)["adam"]


def available(peer):
    if peer != "sparselab":
        return True
    try:
        import sparselab  # noqa: F401
        return True
    except Exception:  # a broken install is reported like a missing one
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--architectures", default=",".join(FAN_IN_ARCHITECTURES))
    ap.add_argument("--adam", choices=ADAM, default="fused",
                    help="torch.optim.Adam's implementation, the same for every peer")
    ap.add_argument("--clock", choices=CLOCKS, default="wall",
                    help="wall time, or the process's CPU time (all its threads: on a machine "
                         "shared with other work, with --threads 1, closer to the idle time)")
    args = ap.parse_args()
    OPTIMIZER.update(ADAM[args.adam])
    CLOCK[0] = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            print(f"note: {var}={os.environ[var]} is set (run with env -u {var})")
    peers = [p for p in PEERS if available(p)]
    for p in PEERS:
        if p not in peers:
            print(f"note: {p} skipped: not installed (pip install sparselab)")
    versions = f"torch {torch.__version__}"
    if "sparselab" in peers:
        import sparselab
        versions += f", sparselab {sparselab.__version__}"
    print(f"# bench/torch_step.py: batch {args.batch}, {args.threads} threads, kernels "
          f"{_kernels.cpu_variant()}, {versions}; medians of {args.repeats} interleaved "
          f"repeats, {args.clock} ms per step (forward + backward + Adam, {args.adam}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'layer / network':<48}{'params':>11}{'Adam ms':>9}"
          + "".join(f"{name:>15}" for name in PEERS) + "   fastest peer / sparsefan")
    rng = np.random.default_rng(0)
    B = args.batch
    for arch in args.architectures.split(","):
        net = ARCHITECTURES[arch]()
        for i, layer in enumerate(net.layers):
            conn = layer.connectivity
            x = rng.standard_normal((B, conn.n_in, layer.c_in)).astype(np.float32)
            dy = rng.standard_normal((B, conn.n_out, layer.c_out)).astype(np.float32)
            steps = {name: LayerStep(PEERS[name](layer), layer, x, dy, input_grad=i > 0)
                     for name in peers}
            steps = checked(steps, steps["sparsefan"].output())
            medians = interleaved_medians(steps, args.repeats)
            k = conn.k if conn.k is not None else "ragged"
            label = (f"{arch} layer {i}: {conn.n_in}->{conn.n_out} k={k} "
                     f"{layer.c_in}->{layer.c_out}{' relu' if layer.activation else ''}")
            report(label, layer.n_params, medians,
                   adam_alone(steps["sparsefan"].module, args.repeats))
        x = rng.random((B, net.n_in), dtype=np.float32)
        y = rng.integers(0, net.n_classes, B)
        models = {name: (sft.from_network(net) if name == "sparsefan"
                         else PeerNetwork(net, PEERS[name])) for name in peers}
        steps = {name: NetworkStep(m, x, y) for name, m in models.items()}
        steps = checked(steps, steps["sparsefan"].output())
        medians = interleaved_medians(steps, args.repeats)
        report(f"{arch} network (mean-logits CE)", net.n_params, medians,
               adam_alone(models["sparsefan"], args.repeats))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
