"""Section sizes of an export compiled for a Cortex-M4 (when arm-none-eabi-gcc is installed)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsefan.export.c import CExport

CORTEX_M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                   "-Os", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
_SECTIONS = (".text", ".rodata", ".data", ".bss")


def _sections(size_tool, obj):
    out = subprocess.run([size_tool, "-A", obj], capture_output=True, text=True, check=True)
    sizes = dict.fromkeys(_SECTIONS, 0)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            for s in _SECTIONS:  # .rodata.str1.1 etc. count as .rodata
                if parts[0] == s or parts[0].startswith(s + "."):
                    sizes[s] += int(parts[1])
    return sizes


def measure_cortex_m4(export: CExport, gcc: str = "arm-none-eabi-gcc",
                      size: str = "arm-none-eabi-size") -> dict[str, dict[str, int]] | None:
    """Compile an export (a :class:`~sparsefan.export.CExport` with its runtime copied) for a
    Cortex-M4 (``-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -Os``, compile only) and return
    ``{"model": {section: bytes}, "runtime": {...}, "total": {...}}`` for .text, .rodata, .data
    and .bss — or None when the cross compiler is not installed."""
    gcc_path, size_path = shutil.which(gcc), shutil.which(size)
    if gcc_path is None or size_path is None:
        return None
    if len(export.runtime) < 2:
        raise ValueError("the export was written without its runtime (runtime=False)")
    src_dir = os.path.dirname(export.source)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, src in (("model", export.source),
                         ("runtime", os.path.join(src_dir, "sf_runtime.c"))):
            obj = os.path.join(tmp, key + ".o")
            proc = subprocess.run([gcc_path, *CORTEX_M4_FLAGS, "-I", src_dir, "-c", src, "-o",
                                   obj], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{gcc} failed on {src}:\n{proc.stderr}")
            result[key] = _sections(size_path, obj)
    result["total"] = {s: result["model"][s] + result["runtime"][s] for s in _SECTIONS}
    return result
