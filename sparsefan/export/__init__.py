"""Export trained networks for edge devices: standalone C99 (float32 or int8) and ONNX.

- :func:`export_c` writes ``NAME.h`` / ``NAME.c`` (const tables + descriptors) and copies the
  runtime ``sf_runtime.h`` / ``sf_runtime.c`` (no malloc, no stdio, no OpenMP) beside them.
- :func:`quantize_int8` (= :func:`sparsefan.quantize`) makes a :class:`QuantizedNetwork`
  (int8 weights with per-(unit, channel) scales, int8 activations with calibrated scales),
  which the engine runs with its int8 kernels; pass it to :func:`export_c`.
- :func:`footprint` gives the flash (const tables) and RAM (scratch) bytes of either;
  :func:`measure_cortex_m4` compiles an export for a Cortex-M4 when arm-none-eabi-gcc exists.
- :func:`export_onnx` writes a standard-opset ONNX graph (needs ``pip install
  'sparsefan[export]'``).

See docs/export.md.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sparsefan.export.c import CExport, Footprint, check_name, export_c, footprint
from sparsefan.export.quantize import QuantizedNetwork, quantize_int8
from sparsefan.export.size import measure_cortex_m4

if TYPE_CHECKING:
    from sparsefan.network import Network


def runtime_dir() -> str:
    """The directory holding ``sf_runtime.h`` and ``sf_runtime.c``.

    An installed package carries them as ``sparsefan/export/runtime`` (mapped from the
    repository's ``csrc/runtime`` at build time, so there is one copy of the source); a source
    checkout (editable install) uses ``csrc/runtime`` directly.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "runtime"),
                  os.path.join(os.path.dirname(os.path.dirname(here)), "csrc", "runtime")]
    for d in candidates:
        if os.path.isfile(os.path.join(d, "sf_runtime.c")):
            return d
    raise FileNotFoundError("the sparsefan C runtime (sf_runtime.c) is missing from this "
                            "installation; reinstall sparsefan")


def check_exportable(network: object) -> None:
    """Raise ValueError for a network the exports cannot express (MaxMin activations)."""
    for i, layer in enumerate(getattr(network, "layers", ())):
        if layer.activation not in (None, "relu"):
            raise ValueError(f"layers[{i}] has activation {layer.activation!r}: the C, int8 and "
                             f"ONNX exports support ReLU and linear layers")


def export_onnx(network: Network, path: str | os.PathLike[str]) -> str:
    """Write ``network`` as an ONNX model to ``path`` (opset 17, dynamic batch); see
    :mod:`sparsefan.export.onnx`. Needs ``pip install 'sparsefan[export]'``."""
    from sparsefan.export.onnx import export_onnx as _export

    return _export(network, path)


__all__ = ["export_c", "export_onnx", "quantize_int8", "QuantizedNetwork", "footprint",
           "Footprint", "CExport", "check_name", "measure_cortex_m4", "runtime_dir"]
