"""A process that joins a cgroup and makes CUDA allocations of known sizes on command.

Commands on stdin, "ok" on stdout after each: init (CUDA context), malloc N, pinned N,
managed N (touched from the CPU), managed_gpu (the managed block touched by a GPU
kernel: its pages migrate), free_all, exit. Uses cupy's runtime API directly (no pool)."""
import ctypes
import sys

cgdir = sys.argv[1]
with open(cgdir + "/cgroup.procs", "w") as f:
    f.write("0")                         # cgroup v2: "0" moves the writing process
import cupy                             # noqa: E402  (imported after joining the cgroup)
from cupy.cuda import runtime as rt     # noqa: E402

held = []
managed = None
print("ok", flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    if cmd == "init":
        rt.setDevice(0)
        rt.free(rt.malloc(1 << 20))
    elif cmd == "malloc":
        p = rt.malloc(int(a[0]))
        rt.memset(p, 1, int(a[0]))
        held.append(("dev", p))
    elif cmd == "pinned":
        p = rt.hostAlloc(int(a[0]), 0)
        ctypes.memset(p, 1, int(a[0]))
        held.append(("host", p))
    elif cmd == "managed":
        n = int(a[0])
        p = rt.mallocManaged(n)
        ctypes.memset(p, 1, n)           # first touch on the CPU
        managed = (p, n)
        held.append(("dev", p))
    elif cmd == "managed_gpu":
        p, n = managed
        mem = cupy.cuda.UnownedMemory(p, n, None)
        arr = cupy.ndarray((n,), dtype=cupy.uint8, memptr=cupy.cuda.MemoryPointer(mem, 0))
        arr += 1                         # GPU touches every page: they migrate to the device
        cupy.cuda.Device(0).synchronize()
    elif cmd == "free_all":
        for kind, p in held:
            (rt.freeHost if kind == "host" else rt.free)(p)
        held.clear()
    elif cmd == "exit":
        break
    print("ok", flush=True)
