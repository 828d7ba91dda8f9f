"""Data-parallel training of a fan-in network with torch DistributedDataParallel (CPU, gloo).

Every process builds the same network (a seeded builder: the same wiring and initial weights),
wraps its ``sparsefan.torch`` module in DDP, and trains on its own shard of the embedded MNIST
subset (``DistributedSampler``); DDP averages the gradients after every backward pass, so the
weights stay identical on every rank. At the end the ranks compare their weights (all_gather),
rank 0 prints the test accuracy and converts the model back to a ``sparsefan.Network``.

One machine, N processes (spawned here, rendezvous on a free local port):

    PYTHONPATH=. python examples/torch_ddp.py --world-size 2

Several machines: start the processes with torchrun, which sets RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT (this script then reads them), e.g. two machines
with one process each, the first one at address HOST0:

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 0 --master-addr HOST0 \
        --master-port 29500 examples/torch_ddp.py          # on HOST0
    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 1 --master-addr HOST0 \
        --master-port 29500 examples/torch_ddp.py          # on HOST1

``--out DIR`` writes every rank's final ``state_dict`` (``rank0.pt``, ...), the initial one
(``initial.pt``) and rank 0's model as a sparsefan model file (``model.npz``).
"""
import argparse
import hashlib
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import sparsefan as sf
import sparsefan.torch as sft
from sparsefan import builders, datasets
from sparsefan.train import as_float_inputs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world-size", type=int, default=2,
                   help="processes to spawn on this machine (ignored under torchrun)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--units", type=int, default=784)
    p.add_argument("--fan-in", type=int, default=28)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--train-size", type=int, default=10000,
                   help="training images of the embedded subset (at most 10000)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per process (default: the CPUs shared among the local ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="directory for the state_dicts and model.npz")
    return p.parse_args(argv)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wiring_digest(model):
    """A digest of every layer's index tables, as a tensor (to compare across ranks)."""
    h = hashlib.sha256()
    for layer in model.layers:
        h.update(layer.connectivity.indptr.tobytes())
        h.update(layer.connectivity.indices.tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


def all_equal(tensor, world_size):
    gathered = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(gathered, tensor)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def train(rank, world_size, args):
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        _train(rank, world_size, args)
    finally:
        dist.destroy_process_group()


def _train(rank, world_size, args):
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    threads = args.threads or max(1, sf.resolve_n_threads(None) // local)
    torch.set_num_threads(threads)  # the kernels follow torch's thread count
    net = builders.direct((28, 28), 10, n_units=args.units, fan_in=args.fan_in,
                          hidden=(args.hidden,), seed=args.seed)
    model = sft.from_network(net)
    # DDP broadcasts rank 0's parameters; the wiring is not a parameter: check it is the same
    if not all_equal(wiring_digest(model), world_size):
        raise RuntimeError("the ranks built different connectivity tables")
    ddp = DistributedDataParallel(model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}

    x, y, xt, yt = datasets.load_embedded()
    x = torch.from_numpy(as_float_inputs(x[:args.train_size]))
    y = torch.from_numpy(y[:args.train_size].astype(np.int64))
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)
    opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)  # a new shard order every epoch, the same on every rank
        total = seen = 0
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(ddp(xb), yb)
            loss.backward()  # DDP all-reduces the gradients here
            opt.step()
            total += loss.item() * len(yb)
            seen += len(yb)
        if rank == 0:
            print(f"epoch {epoch + 1}: loss {total / seen:.4f} on rank 0's {seen} examples "
                  f"({world_size} ranks, {threads} threads each)", flush=True)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    same = all_equal(flat, world_size)
    if rank == 0:
        acc = (model.predict(torch.from_numpy(as_float_inputs(xt))).numpy() == yt).mean()
        print(f"test accuracy {acc:.4f} on {len(yt)} images; weights identical on all "
              f"{world_size} ranks: {same}", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(args.out, f"rank{rank}.pt"))
        if rank == 0:
            torch.save(initial, os.path.join(args.out, "initial.pt"))
            sf.save_model(sft.to_network(ddp), os.path.join(args.out, "model.npz"))
    if not same:
        raise RuntimeError("the ranks ended with different weights")


def main(argv=None):
    args = parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        train(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    mp.spawn(train, args=(args.world_size, args), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
