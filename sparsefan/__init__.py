"""sparsefan: fixed fan-in sparse neural networks on CPUs.

Every unit reads a fixed, pre-chosen subset of its inputs (a CSR index table, see
:class:`Connectivity`); :class:`FanIn` layers run OpenMP C kernels for the forward pass and
both gradients, checked against the float64 twin in :mod:`sparsefan.reference`;
:func:`quantize` makes an int8 :class:`QuantizedNetwork` for inference.
"""
from sparsefan._engine import openmp_enabled
from sparsefan._threads import resolve_n_threads
from sparsefan.connectivity import INDEX_DTYPE, INDPTR_DTYPE, Connectivity, Transposed
from sparsefan.layers import FanIn, Gradients
from sparsefan.layout import from_feature_major, to_feature_major
from sparsefan.network import Network, Workspace
from sparsefan.quantized import QuantizedNetwork, quantize
from sparsefan import attacks, builders, certify, datasets, io  # noqa: E402  (public modules)
from sparsefan.io import load_model, load_quantized, save_model

__version__ = "0.1.0"

__all__ = [
    "Connectivity", "Transposed", "FanIn", "Gradients", "INDEX_DTYPE", "INDPTR_DTYPE",
    "openmp_enabled", "resolve_n_threads", "to_feature_major", "from_feature_major",
    "Network", "Workspace", "attacks", "builders", "certify", "datasets", "io", "load_model", "save_model",
    "quantize", "QuantizedNetwork", "load_quantized", "__version__",
]
