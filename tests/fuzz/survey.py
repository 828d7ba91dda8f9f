"""Count what happens to crafted untrusted files: loaded / documented exception / other
exception. A crash would end the survey itself (and be a finding).

    python tests/fuzz/survey.py [--n 3000] [--seed 0]

Model files: byte mutations of valid files, and member mutations with the archive rebuilt
(valid CRCs). IDX files: byte mutations of valid raw and gzipped files. Prints one line per kind.
"""
import argparse
import collections
import gzip
import io
import os
import struct
import tempfile
import zipfile

import numpy as np

from sparsefan import builders
from sparsefan.datasets import DatasetError, read_idx
from sparsefan.io import ModelFileError, load_model, save_model


def mutate(data, rng, ops):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, ops + 1))):
        pos = int(rng.integers(0, max(len(data), 1)))
        op = rng.integers(0, 3)
        if op == 0 and data:
            data[pos % len(data)] = int(rng.integers(0, 256))
        elif op == 1:
            del data[pos:pos + int(rng.integers(1, 16))]
        else:
            data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    return bytes(data)


def try_one(path, blob, load, documented, tally):
    with open(path, "wb") as f:
        f.write(blob)
    try:
        load(path)
        tally["loaded"] += 1
    except documented:
        tally["documented"] += 1
    except Exception as e:  # noqa: BLE001 - this is what the survey counts
        tally[f"other: {type(e).__name__}"] += 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    d = tempfile.mkdtemp()
    path = os.path.join(d, "f")

    net = builders.direct((4, 4), 3, n_units=5, fan_in=3, hidden=(2,), seed=1)
    save_model(net, path, metadata={"k": [1, {"z": None}]})
    with open(path, "rb") as f:
        good = f.read()
    with zipfile.ZipFile(io.BytesIO(good)) as z:
        items = [(i.filename, z.read(i)) for i in z.infolist()]
    tally = collections.Counter()
    for i in range(args.n):
        if i % 2:
            blob = mutate(good, rng, 8)
        else:
            k = int(rng.integers(0, len(items)))
            changed = list(items)
            changed[k] = (items[k][0], mutate(items[k][1], rng, 6))
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                for n, data in changed:
                    z.writestr(n, data)
            blob = buf.getvalue()
        try_one(path, blob, load_model, ModelFileError, tally)
    print(f"model files: {args.n} tried: {dict(tally)}")

    imgs = rng.integers(0, 256, (7, 5, 4), dtype=np.uint8)
    raw = b"\0\0\x08\x03" + struct.pack(">3I", *imgs.shape) + imgs.tobytes()
    tally = collections.Counter()
    for i in range(args.n):
        blob = mutate(raw, rng, 6)
        if i % 2:
            blob = gzip.compress(blob, mtime=0) if i % 4 == 1 else mutate(gzip.compress(raw), rng, 4)
        try_one(path, blob, read_idx, DatasetError, tally)
    print(f"IDX files: {args.n} tried: {dict(tally)}")


if __name__ == "__main__":
    main()
