"""Build the Cython kernels, with OpenMP when the compiler has it.

Environment switches:
  DECLCNN_REQUIRE_OPENMP=1  fail the build when OpenMP is missing (CI sets it).
  DECLCNN_PORTABLE=1        no -march=native (for wheels that must run on any x86-64).
  DECLCNN_KERNELS=a,b       build only these kernel modules (development).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from glob import glob
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d", n > 0);
    return 0;
}
"""


def compiler_has_openmp(compiler):
    """Compile and link a tiny OpenMP program with the compiler setuptools will use."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        Path(src).write_text(OMP_PROBE)
        objects = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
        exe = os.path.join(tmp, "probe")
        compiler.link_executable(objects, exe, extra_postargs=["-fopenmp"])
        return subprocess.run([exe], capture_output=True, text=True).stdout.strip() == "1"
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        openmp = compiler_has_openmp(self.compiler)
        if not openmp:
            if os.environ.get("DECLCNN_REQUIRE_OPENMP") == "1":
                sys.exit("declcnn: the C compiler has no OpenMP and DECLCNN_REQUIRE_OPENMP=1.")
            print("declcnn: WARNING: no OpenMP in this compiler; kernels will run serially.")
        native = os.environ.get("DECLCNN_PORTABLE") != "1"
        compile_args = ["-O3", "-fno-math-errno"] + (["-march=native"] if native else [])
        link_args = []
        if openmp:
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
        flags = " ".join(compile_args) + (
            f"; {', '.join(sorted(WIDE_VECTORS))}: -mprefer-vector-width=512" if native else "")
        flags += f"; {', '.join(sorted(SEPARATE_ROUNDING))}: -ffp-contract=off"
        for ext in self.extensions:
            ext.extra_compile_args = list(compile_args)
            if native and ext.name in WIDE_VECTORS:
                ext.extra_compile_args.append("-mprefer-vector-width=512")
            if ext.name in SEPARATE_ROUNDING:
                ext.extra_compile_args.append("-ffp-contract=off")
            ext.extra_link_args = link_args
            ext.define_macros.append(("DECLCNN_CFLAGS", f'"{flags}"'))
        super().build_extensions()


# GCC prefers 256-bit vectors on AVX-512 machines.  The conv micro-kernels keep 24 accumulators
# of 16 floats in zmm registers only when 512-bit vectors are allowed; everywhere else short
# rows (LeNet's 14- and 5-wide pooling outputs) never fill a 16-lane loop and fall to scalar
# code: 512-bit vectors made the 2×2 max pool 3-4× slower.
WIDE_VECTORS = {"declcnn._kernels.conv"}
# Loops that must round as numpy does, after every operation: GCC fuses a multiply and an add
# into one FMA (one rounding) wherever the target has FMA, unless told not to.
SEPARATE_ROUNDING = {"declcnn._kernels.training"}


def extensions():
    # DECLCNN_KERNELS=conv,pool builds only those modules: lets a developer rebuild one kernel
    # while another is mid-edit.
    only = {k for k in os.environ.get("DECLCNN_KERNELS", "").split(",") if k}
    exts = []
    for pyx in sorted(glob("declcnn/_kernels/*.pyx")):
        name = pyx[:-4].replace("/", ".")
        if only and name.rsplit(".", 1)[1] not in only:
            continue
        exts.append(
            Extension(
                name,
                [pyx],
                include_dirs=[numpy.get_include(), "declcnn/_kernels"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        nthreads=int(os.environ.get("DECLCNN_BUILD_JOBS", "0")),
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
