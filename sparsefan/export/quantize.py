"""int8 quantization for the C export: :func:`quantize_int8` is :func:`sparsefan.quantize`.

One implementation serves the engine and the export (the scheme is described in
:mod:`sparsefan.quantized`): the :class:`QuantizedNetwork` it returns runs on the engine's int8
kernels, and ``export_c`` writes its tables for the C runtime, which computes the same per-unit
logits bit for bit (no fused multiply-add: see docs/export.md).
"""
from __future__ import annotations

from sparsefan.quantized import (  # noqa: F401 (the export's names for them)
    QMAX, QuantizedLayer, QuantizedNetwork, quantize, round_half_away,
)


def quantize_int8(network, calibration, percentile=100.0, batch_size=2048):
    """:func:`sparsefan.quantize`: an int8 :class:`QuantizedNetwork` of ``network``, activation
    scales calibrated on ``calibration`` (see there)."""
    return quantize(network, calibration, percentile=percentile, batch_size=batch_size)
