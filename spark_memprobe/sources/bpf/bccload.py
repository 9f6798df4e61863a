"""Find bcc's Python module and kernel headers, without the user setting PYTHONPATH.

bcc's Python module ships with the distribution (Debian `python3-bpfcc` installs it for the
system python3 only, in /usr/lib/python3/dist-packages); PyPI's `bcc` is an unrelated maths
package. From a virtualenv or another Python 3, we load only the `bcc` package from the
known distribution locations (never the whole dist-packages directory), and only when a plain
`import bcc` does not already give the real one.

bcc compiles BPF C against kernel headers. Where /lib/modules/$(uname -r)/build is missing
(this VM: kernel 6.18, Debian ships 6.1 headers) it needs BCC_KERNEL_SOURCE pointing at a
merged header tree (scripts/setup.sh builds one with `cp -as`, docs/facts.md#f-vm). With
mismatched headers, struct layouts are wrong, so our BPF code reads only helpers and
tracepoint fields (whose layout bcc takes from the running kernel's tracefs format files).
"""
from __future__ import annotations

import glob
import importlib.util
import warnings
import os
import sys
from typing import Optional

# Where distributions install bcc's Python package (Debian/Ubuntu, Fedora/RHEL, Arch, local builds)
BCC_PACKAGE_DIRS = [
    "/usr/lib/python3/dist-packages",
    "/usr/lib/python3/site-packages",
    "/usr/local/lib/python3/dist-packages",
    *sorted(glob.glob("/usr/lib/python3.*/site-packages"), reverse=True),
    *sorted(glob.glob("/usr/lib64/python3.*/site-packages"), reverse=True),
    *sorted(glob.glob("/usr/share/bcc/python")),
]

# Merged header trees, in the order tried after BCC_KERNEL_SOURCE and the running kernel's own
MERGED_HEADERS = ["/usr/src/memprobe-kernel-headers"]

_bcc = None
_bcc_error: Optional[str] = None


def _is_real_bcc(mod) -> bool:
    return hasattr(mod, "BPF") and hasattr(mod, "PerfType")


def _load_from(pkg_dir: str):
    init = os.path.join(pkg_dir, "__init__.py")
    spec = importlib.util.spec_from_file_location("bcc", init, submodule_search_locations=[pkg_dir])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {init}")
    mod = importlib.util.module_from_spec(spec)
    saved = {k: v for k, v in sys.modules.items() if k == "bcc" or k.startswith("bcc.")}
    for k in saved:
        del sys.modules[k]
    sys.modules["bcc"] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        for k in [k for k in sys.modules if k == "bcc" or k.startswith("bcc.")]:
            del sys.modules[k]
        sys.modules.update(saved)
        raise
    return mod


def import_bcc():
    """The bcc module, or None; bcc_error() then says why in one line. Never raises."""
    # bcc 0.26 has regexes that Python 3.12 warns about when compiling it (invalid escape
    # sequence, bcc/__init__.py); that noise is not ours to print on every run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        return _import_bcc()


def _import_bcc():
    global _bcc, _bcc_error
    if _bcc is not None or _bcc_error is not None:
        return _bcc
    errors = []
    try:
        import bcc  # noqa: F401  (the real one if this Python already sees it)
        if _is_real_bcc(bcc):
            _bcc = bcc
            return _bcc
        errors.append(f"`import bcc` gave {getattr(bcc, '__file__', '?')}, which is not the BPF Compiler Collection")
    except Exception as e:  # noqa: BLE001 - libbcc missing raises OSError inside bcc's import
        errors.append(f"import bcc: {e}")
    for base in BCC_PACKAGE_DIRS:
        pkg = os.path.join(base, "bcc")
        if not os.path.isfile(os.path.join(pkg, "__init__.py")):
            continue
        try:
            mod = _load_from(pkg)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{pkg}: {e}")
            continue
        if _is_real_bcc(mod):
            _bcc = mod
            return _bcc
    _bcc_error = ("bcc not found (install Debian's python3-bpfcc; PyPI's `bcc` is unrelated)"
                  if len(errors) <= 1 else "bcc unusable: " + "; ".join(errors[1:]))
    return None


def bcc_error() -> Optional[str]:
    import_bcc()
    return _bcc_error


def headers_version(tree: str) -> Optional[str]:
    """Kernel version a header tree was made for (include/generated/utsrelease.h)."""
    for rel in ("include/generated/utsrelease.h",):
        try:
            with open(os.path.join(tree, rel)) as f:
                for line in f:
                    if "UTS_RELEASE" in line:
                        return line.split('"')[1]
        except (OSError, IndexError):
            continue
    return None


def find_kernel_source() -> tuple[Optional[str], str]:
    """(directory to put in BCC_KERNEL_SOURCE or None when bcc finds headers itself, note)."""
    release = os.uname().release
    own = f"/lib/modules/{release}/build"
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and os.path.isdir(os.path.join(env, "include")):
        return env, f"kernel headers from BCC_KERNEL_SOURCE={env} ({headers_version(env) or 'version unknown'})"
    if os.path.isdir(os.path.join(own, "include")):
        return None, f"kernel headers of the running kernel ({own})"
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return None, "kernel headers from /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS)"
    for tree in MERGED_HEADERS:
        if os.path.isdir(os.path.join(tree, "include")):
            v = headers_version(tree) or "version unknown"
            return tree, (f"kernel headers {v} from {tree} for running kernel {release}"
                          + ("" if v == release else ": mismatched, so the BPF code reads only helpers "
                             "and tracepoint fields"))
    return None, (f"no kernel headers for {release} (run scripts/setup.sh, or install "
                  "linux-headers and set BCC_KERNEL_SOURCE); compiling BPF will likely fail")


def prepare_environment() -> str:
    """Set BCC_KERNEL_SOURCE when needed (before bcc compiles anything); return the note."""
    tree, note = find_kernel_source()
    if tree is not None:
        os.environ["BCC_KERNEL_SOURCE"] = tree
    return note
