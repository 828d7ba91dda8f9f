"""Build the sparsefan C kernels and their Cython bindings.

Environment switches (read at build time):
  SPARSEFAN_OPENMP=0   build without OpenMP (single-threaded kernels); default: use it when the
                       compiler supports -fopenmp, otherwise warn and build without it.
  SPARSEFAN_NATIVE=1   add -march=native (local builds only: the binary then runs only on CPUs
                       like this one). Off by default so wheels run on any x86-64.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_TEST = r"""
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
  n += 1;
  return omp_get_max_threads() > 0 && n > 0 ? 0 : 1; }
"""


def _env_flag(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be 0 or 1, got {value!r}")


def _compiler_supports_openmp():
    """Compile and link a tiny OpenMP program with the compiler Python was built with."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    if shutil.which(cc[0]) is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        try:
            result = subprocess.run(
                cc + ["-fopenmp", src, "-o", os.path.join(tmp, "omp_test")],
                capture_output=True,
            )
        except OSError:
            return False
        return result.returncode == 0


use_openmp = _env_flag("SPARSEFAN_OPENMP", True)
if use_openmp and sys.platform != "win32" and not _compiler_supports_openmp():
    warnings.warn(
        "sparsefan: the C compiler does not support OpenMP (-fopenmp); building single-threaded "
        "kernels. sparsefan.openmp_enabled() will return False."
    )
    use_openmp = False
elif not use_openmp:
    print("sparsefan: SPARSEFAN_OPENMP=0, building single-threaded kernels.")

compile_args = ["-O3"]
link_args = []
if sys.platform == "win32":
    compile_args = ["/O2"] + (["/openmp"] if use_openmp else [])
else:
    if use_openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
        link_args.append("-pthread")  # csrc/pool.c: the kernels' worker threads
    if _env_flag("SPARSEFAN_NATIVE", False):
        compile_args.append("-march=native")

extensions = [
    Extension(
        "sparsefan._kernels",
        # fanin_<variant>.c: the kernel template csrc/fanin_simd.h compiled per instruction set
        # (target attributes, no -m flags), picked at run time by csrc/fanin.c
        sources=["sparsefan/_kernels.pyx", "csrc/fanin.c", "csrc/fanin_generic.c",
                 "csrc/fanin_avx2.c", "csrc/fanin_avx512.c", "csrc/certify.c", "csrc/pool.c",
                 # int8 inference: int8.c dispatches to int8_<variant>.c
                 "csrc/int8.c", "csrc/int8_generic.c", "csrc/int8_avx2.c"],
        include_dirs=["csrc"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        depends=["csrc/fanin.h", "csrc/certify.h", "csrc/fanin_kernels.h", "csrc/fanin_simd.h",
                 "csrc/fanin_simd_gather.h", "csrc/fanin_simd_params.h",
                 "csrc/fanin_simd_transpose.h", "csrc/fanin_ymm.h", "csrc/pool.h",
                 "csrc/int8.h", "csrc/int8_kernels.h", "sparsefan/_fanin.pxd"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
