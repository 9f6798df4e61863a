"""spark_memprobe: where every byte of a GPU host's memory is counted.

The native sampler (csrc/, built with cffi) is optional: if it cannot be built the
package installs without it and uses the pure-Python readers (`memprobe doctor` says which)."""
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


BUILD_ERROR = "_native_build_error.txt"     # read by sources/sampler.py native_available()


class OptionalBuildExt(build_ext):
    """Build the cffi extension, but do not fail the install when no compiler is there. The
    reason goes into the installed package, so `memprobe doctor` can say why it fell back."""

    def _error_files(self):
        """Where the build error goes: the built package, and the source tree for --inplace
        and editable installs (pip install -e), which import the package from there."""
        out = [os.path.join(self.build_lib, "spark_memprobe", BUILD_ERROR)]
        if getattr(self, "_source_too", False):
            out.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "spark_memprobe", BUILD_ERROR))
        return out

    def _failed(self, e):
        print(f"warning: native sampler not built ({e}); pure-Python readers will be used",
              file=sys.stderr)
        if getattr(self, "_failed_once", False):
            return                   # keep the first error: later ones follow from it
        self._failed_once = True
        for out in self._error_files():
            try:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out, "w") as f:
                    f.write(f"{type(e).__name__}: {e}".strip().replace("\n", " ")[:500] + "\n")
            except OSError:
                pass

    def run(self):
        self._source_too = bool(self.inplace or getattr(self, "editable_mode", False))
        for stale in self._error_files():
            if os.path.exists(stale):
                os.unlink(stale)
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure falls back to pure Python
            self._failed(e)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._failed(e)


def version():
    ns = {}
    with open(os.path.join("spark_memprobe", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                exec(line, ns)
    return ns["__version__"]


setup(
    name="spark_memprobe",
    version=version(),
    description="Memory accounting diagnostic for GPU hosts: which pages are counted where",
    packages=find_packages(include=["spark_memprobe", "spark_memprobe.*"]),
    package_data={"spark_memprobe": ["bpf/*.c"]},
    python_requires=">=3.9",
    install_requires=[
        "cffi>=1.15",
        "psutil>=5.9",
        "rich>=13",
        "nvidia-ml-py>=12.535",
        "docker>=7",          # Docker Engine API client (also Podman's compatible API): sources/engines.py
        "prometheus_client>=0.17",   # memprobe export: exposition formats and HTTP server (cli/export.py)
    ],
    extras_require={
        # markdown-it-py: the report tests parse the Markdown report as CommonMark
        "test": ["pytest>=7", "hypothesis>=6", "markdown-it-py>=3"],
    },
    setup_requires=["cffi>=1.15"],
    cffi_modules=["spark_memprobe/_build_native.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
    entry_points={"console_scripts": ["memprobe=spark_memprobe.cli:main"]},
)
