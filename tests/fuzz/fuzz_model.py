"""Fuzz the model-file reader: whatever the bytes, load_model returns a Network or raises
ModelFileError — no other exception, no crash, no runaway allocation.

    python tests/fuzz/fuzz_model.py -max_total_time=60 [-rss_limit_mb=2048] [corpus_dir]

The seed corpus is a few valid model files written here (mutations of them reach far deeper
than random bytes). Run by .ci/run for a fixed time budget.
"""
import io
import os
import sys
import tempfile
import zipfile

import atheris

with atheris.instrument_imports():
    import numpy as np

    from sparsefan import builders
    from sparsefan.io import ModelFileError, load_model, save_model

_DIR = tempfile.mkdtemp(prefix="sparsefan-fuzz-")
_PATH = os.path.join(_DIR, "m.npz")


def _seeds():
    nets = [builders.direct((4, 4), 3, n_units=5, fan_in=3, hidden=(2,), seed=1),
            builders.hierarchy((4, 4), 3, levels=2, n_units=4, fan_in=2, channels=(2, 2),
                               seed=2),
            builders.partition_ensemble((4, 4), 3, part_size=4, hidden=(2,), seed=3)]
    out = []
    for i, net in enumerate(nets):
        p = os.path.join(_DIR, f"seed{i}.npz")
        save_model(net, p, metadata={"k": [1, {"z": None}], "s": "x"})
        with open(p, "rb") as f:
            out.append(f.read())
    return out


SEEDS = _seeds()


def one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:  # raw bytes
        blob = fdp.ConsumeBytes(fdp.remaining_bytes())
    else:  # a valid file with one member mutated, the archive rebuilt (CRCs valid)
        seed = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
        with zipfile.ZipFile(io.BytesIO(seed)) as z:
            items = [(i.filename, z.read(i)) for i in z.infolist()]
        k = fdp.ConsumeIntInRange(0, len(items) - 1)
        name, payload = items[k]
        payload = bytearray(payload)
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            if not payload:
                break
            pos = fdp.ConsumeIntInRange(0, len(payload) - 1)
            op = fdp.ConsumeIntInRange(0, 2)
            if op == 0:
                payload[pos] = fdp.ConsumeInt(1) & 0xFF
            elif op == 1:
                del payload[pos:pos + fdp.ConsumeIntInRange(1, 32)]
            else:
                payload[pos:pos] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 32))
        if mode == 2 and fdp.ConsumeBool():  # a duplicate or renamed member
            other = ["payload", "../evil", "layers/9/weight", "META.JSON", name]
            items.append((other[fdp.ConsumeIntInRange(0, len(other) - 1)], bytes(payload)))
        else:
            items[k] = (name, bytes(payload))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for n, d in items:
                z.writestr(n, d)
        blob = buf.getvalue()
    with open(_PATH, "wb") as f:
        f.write(blob)
    try:
        net = load_model(_PATH)
    except ModelFileError:
        return
    net.predict(np.zeros((1, net.n_in), np.float32))  # what loads must run


def main():
    import warnings
    warnings.simplefilter("ignore")  # zipfile warns about duplicate names it writes
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
