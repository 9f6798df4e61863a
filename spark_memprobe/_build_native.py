"""cffi builder for spark_memprobe._native (run by setup.py through cffi_modules).

The cdef is the CDEF section of csrc/memprobe.h, so C and Python share one layout."""
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")


def cdef_text(header=os.path.join(CSRC, "memprobe.h")):
    text = open(header).read()
    return text.split("/* CDEF BEGIN */", 1)[1].split("/* CDEF END */", 1)[0]


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "spark_memprobe._native",
    '#include "memprobe.h"',
    sources=[os.path.relpath(os.path.join(CSRC, f)) for f in ("parse.c", "sampler.c", "nvml.c", "ring.c", "row.c")],
    include_dirs=[os.path.relpath(CSRC)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["dl", "pthread", "z"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
