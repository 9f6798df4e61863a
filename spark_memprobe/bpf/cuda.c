// memprobe: CUDA driver allocations, by uprobes and uretprobes on libcuda.so.1.
// Signatures (cuda.h, CUDA driver API):
//   CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
//   CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
//   CUresult cuMemAllocHost_v2(void **pp, size_t bytesize)
//   CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
//   CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes,
//                               size_t Height, unsigned int ElementSizeBytes)
//   CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
//                        const CUmemAllocationProp *prop, unsigned long long flags)
//   CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
//   CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
//                                    CUstream hStream)
//   CUresult cuMemFree_v2(CUdeviceptr dptr)
//   CUresult cuMemFreeHost(void *p)
//   CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
//   CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
//   CUresult cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags)
//   CUresult cuMemHostUnregister(void *p)
// CUdeviceptr and CUmemGenericAllocationHandle are 64-bit on 64-bit hosts. The entry probe
// saves the out-pointer argument per thread; the return probe reads the pointer (or handle)
// through it and counts only when the CUresult is 0 (CUDA_SUCCESS). cuMemHostRegister_v2 has no
// out-pointer: the registered address is its first argument.
#include <uapi/linux/ptrace.h>

// kinds (events.CUDA_KINDS order)
#define MP_CU_DEVICE 0
#define MP_CU_MANAGED 1
#define MP_CU_HOST 2
#define MP_CU_VMM 3
#define MP_CU_POOL 4
#define MP_CU_HOSTREG 5
#define MP_CU_UNKNOWN 255

// functions (sources/bpf/cuda.py CUDA_FUNCS has the same numbers; a test compares them)
#define MP_CU_FUNC_cuMemAlloc_v2 0
#define MP_CU_FUNC_cuMemAllocManaged 1
#define MP_CU_FUNC_cuMemAllocHost_v2 2
#define MP_CU_FUNC_cuMemHostAlloc 3
#define MP_CU_FUNC_cuMemAllocPitch_v2 4
#define MP_CU_FUNC_cuMemCreate 5
#define MP_CU_FUNC_cuMemAllocAsync 6
#define MP_CU_FUNC_cuMemAllocFromPoolAsync 7
#define MP_CU_FUNC_cuMemFree_v2 8
#define MP_CU_FUNC_cuMemFreeHost 9
#define MP_CU_FUNC_cuMemRelease 10
#define MP_CU_FUNC_cuMemFreeAsync 11
#define MP_CU_FUNC_cuMemHostRegister_v2 12
#define MP_CU_FUNC_cuMemHostUnregister 13

// key spaces: pointers (device, managed and host share the unified address space) and VMM handles
#define MP_CU_SPACE_PTR 0
#define MP_CU_SPACE_HANDLE 1

// A hooked entry point may call another one (a driver built on its own API): only the
// outermost call of a thread counts, so nothing is counted twice or under the wrong kind.
#define MP_CU_STALE_NS (60ULL * 1000000000ULL)

#ifndef MP_CU_ALLOC_ENTRIES
#define MP_CU_ALLOC_ENTRIES 262144
#endif

struct mp_cu_pending {
    u64 out;            // user address of the out-pointer (dptr, pp, handle)
    u64 size;
    u64 pitch_out;      // cuMemAllocPitch_v2: user address of *pPitch
    u64 height;
    u64 ptr;            // frees: the pointer or handle being freed
    u64 ts;             // entry time: an entry older than MP_CU_STALE_NS lost its return
    u32 func;
    u32 kind;
    u32 depth;          // hooked calls nested inside this one (not counted)
    u32 pad;
};

struct mp_cu_key {
    u32 tgid;
    u32 space;
    u64 ptr;
};

struct mp_cu_alloc {
    u64 size;
    u64 cgroup_id;
    u32 kind;
    u32 func;
};

struct mp_cu_okey {
    u32 tgid;
    u32 kind;
};

struct mp_cu_out {
    s64 bytes;
    u64 allocs;
    u64 frees;
    u64 failed;
    u64 cgroup_id;
};

struct mp_cu_event {
    u64 ts;
    u64 cgroup_id;
    u64 size;           // 0 for a free of an allocation made before the probes started
    u64 ptr;
    u32 tgid;
    u32 tid;
    u32 func;
    u32 kind;
    s32 result;
    s32 stack_id;
    char comm[16];
};

BPF_HASH(mp_cu_pending, u64, struct mp_cu_pending, 16384);
BPF_HASH(mp_cu_allocs, struct mp_cu_key, struct mp_cu_alloc, MP_CU_ALLOC_ENTRIES);
BPF_HASH(mp_cu_outstanding, struct mp_cu_okey, struct mp_cu_out, 16384);
BPF_PERF_OUTPUT(mp_cu_events);
#ifdef MP_CU_STACKS
BPF_STACK_TRACE(mp_cu_stacks, 4096);
#endif

static __always_inline struct mp_cu_out *mp_cu_out_of(u32 tgid, u32 kind, u64 cg)
{
    struct mp_cu_okey k = {};
    k.tgid = tgid;
    k.kind = kind;
    struct mp_cu_out *o = mp_cu_outstanding.lookup(&k);
    if (o)
        return o;
    struct mp_cu_out zero = {};
    zero.cgroup_id = cg;
    mp_cu_outstanding.update(&k, &zero);
    return mp_cu_outstanding.lookup(&k);
}

static __always_inline int mp_cu_enter(u32 func, u32 kind, u64 out, u64 size, u64 pitch_out, u64 height, u64 ptr)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 now = bpf_ktime_get_ns();
    struct mp_cu_pending *cur = mp_cu_pending.lookup(&id);
    if (cur && now - cur->ts < MP_CU_STALE_NS) {
        cur->depth += 1;
        return 0;
    }
    struct mp_cu_pending p = {};
    p.ts = now;
    p.out = out;
    p.size = size;
    p.pitch_out = pitch_out;
    p.height = height;
    p.ptr = ptr;
    p.func = func;
    p.kind = kind;
    mp_cu_pending.update(&id, &p);
    return 0;
}

static __always_inline void mp_cu_emit(struct pt_regs *ctx, u64 id, u64 cg, u32 func, u32 kind,
                                       u64 size, u64 ptr, s32 rc)
{
    struct mp_cu_event e = {};
    e.ts = bpf_ktime_get_ns();
    e.cgroup_id = cg;
    e.size = size;
    e.ptr = ptr;
    e.tgid = id >> 32;
    e.tid = (u32)id;
    e.func = func;
    e.kind = kind;
    e.result = rc;
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
#ifdef MP_CU_STACKS
    e.stack_id = mp_cu_stacks.get_stackid(ctx, BPF_F_USER_STACK);
#else
    e.stack_id = -1;
#endif
    mp_cu_events.perf_submit(ctx, &e, sizeof(e));
}

/* The entry of this thread's outermost hooked call, taken out of the table; 0 when there is
 * none, or when a nested hooked call returns (its depth is counted down instead). */
static __always_inline int mp_cu_take_pending(u64 id, struct mp_cu_pending *p)
{
    struct mp_cu_pending *pp = mp_cu_pending.lookup(&id);
    if (!pp)
        return 0;
    if (pp->depth) {
        pp->depth -= 1;     // return of a nested hooked call
        return 0;
    }
    *p = *pp;
    mp_cu_pending.delete(&id);
    return 1;
}

static __always_inline int mp_cu_alloc_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct mp_cu_pending p = {};
    if (!mp_cu_take_pending(id, &p))
        return 0;
    s32 rc = (s32)PT_REGS_RC(ctx);
    u64 cg = bpf_get_current_cgroup_id();
    u32 tgid = id >> 32;
    u64 ptr = 0;
    u64 size = p.size;
    struct mp_cu_out *o = mp_cu_out_of(tgid, p.kind, cg);
    if (rc != 0) {
        if (o)
            __sync_fetch_and_add(&o->failed, 1);
        mp_cu_emit(ctx, id, cg, p.func, p.kind, size, 0, rc);
        return 0;
    }
    if (p.out)
        bpf_probe_read_user(&ptr, sizeof(ptr), (void *)p.out);
    else
        ptr = p.ptr;        // cuMemHostRegister_v2: the address was an argument
    if (p.func == MP_CU_FUNC_cuMemAllocPitch_v2) {
        u64 pitch = 0;
        bpf_probe_read_user(&pitch, sizeof(pitch), (void *)p.pitch_out);
        size = pitch * p.height;
    }
    struct mp_cu_key k = {};
    k.tgid = tgid;
    k.space = p.func == MP_CU_FUNC_cuMemCreate ? MP_CU_SPACE_HANDLE : MP_CU_SPACE_PTR;
    k.ptr = ptr;
    struct mp_cu_alloc a = {};
    a.size = size;
    a.cgroup_id = cg;
    a.kind = p.kind;
    a.func = p.func;
    mp_cu_allocs.update(&k, &a);
    if (o) {
        __sync_fetch_and_add(&o->bytes, size);
        __sync_fetch_and_add(&o->allocs, 1);
    }
    mp_cu_emit(ctx, id, cg, p.func, p.kind, size, ptr, rc);
    return 0;
}

static __always_inline int mp_cu_free_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    struct mp_cu_pending p = {};
    if (!mp_cu_take_pending(id, &p))
        return 0;
    s32 rc = (s32)PT_REGS_RC(ctx);
    u64 cg = bpf_get_current_cgroup_id();
    u32 tgid = id >> 32;
    if (rc != 0 || p.ptr == 0) {
        mp_cu_emit(ctx, id, cg, p.func, MP_CU_UNKNOWN, 0, p.ptr, rc);
        return 0;
    }
    struct mp_cu_key k = {};
    k.tgid = tgid;
    k.space = p.func == MP_CU_FUNC_cuMemRelease ? MP_CU_SPACE_HANDLE : MP_CU_SPACE_PTR;
    k.ptr = p.ptr;
    struct mp_cu_alloc *a = mp_cu_allocs.lookup(&k);
    if (!a) {
        // allocated before the probes started: size unknown
        mp_cu_emit(ctx, id, cg, p.func, MP_CU_UNKNOWN, 0, p.ptr, rc);
        return 0;
    }
    u64 size = a->size;
    u32 kind = a->kind;
    mp_cu_allocs.delete(&k);
    struct mp_cu_out *o = mp_cu_out_of(tgid, kind, cg);
    if (o) {
        __sync_fetch_and_add(&o->bytes, -(s64)size);
        __sync_fetch_and_add(&o->frees, 1);
    }
    mp_cu_emit(ctx, id, cg, p.func, kind, size, p.ptr, rc);
    return 0;
}

// entry probes: (out-pointer, size) from the documented argument positions
int mp_cu_alloc(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemAlloc_v2, MP_CU_DEVICE, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0, 0); }
int mp_cu_managed(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemAllocManaged, MP_CU_MANAGED, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0, 0); }
int mp_cu_host(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemAllocHost_v2, MP_CU_HOST, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0, 0); }
int mp_cu_hostalloc(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemHostAlloc, MP_CU_HOST, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0, 0); }
int mp_cu_pitch(struct pt_regs *ctx)
{
    return mp_cu_enter(MP_CU_FUNC_cuMemAllocPitch_v2, MP_CU_DEVICE, PT_REGS_PARM1(ctx), 0,
                       PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx), 0);
}
int mp_cu_create(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemCreate, MP_CU_VMM, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0, 0); }
int mp_cu_async(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemAllocAsync, MP_CU_POOL, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0, 0); }
int mp_cu_frompool(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemAllocFromPoolAsync, MP_CU_POOL, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, 0, 0); }
int mp_cu_free(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemFree_v2, MP_CU_UNKNOWN, 0, 0, 0, 0, PT_REGS_PARM1(ctx)); }
int mp_cu_freehost(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemFreeHost, MP_CU_UNKNOWN, 0, 0, 0, 0, PT_REGS_PARM1(ctx)); }
int mp_cu_release(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemRelease, MP_CU_UNKNOWN, 0, 0, 0, 0, PT_REGS_PARM1(ctx)); }
int mp_cu_freeasync(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemFreeAsync, MP_CU_UNKNOWN, 0, 0, 0, 0, PT_REGS_PARM1(ctx)); }
int mp_cu_hostreg(struct pt_regs *ctx)
{
    return mp_cu_enter(MP_CU_FUNC_cuMemHostRegister_v2, MP_CU_HOSTREG, 0, PT_REGS_PARM2(ctx), 0, 0,
                       PT_REGS_PARM1(ctx));
}
int mp_cu_hostunreg(struct pt_regs *ctx)
{ return mp_cu_enter(MP_CU_FUNC_cuMemHostUnregister, MP_CU_UNKNOWN, 0, 0, 0, 0, PT_REGS_PARM1(ctx)); }

// return probes
int mp_cu_alloc_ret(struct pt_regs *ctx) { return mp_cu_alloc_return(ctx); }
int mp_cu_free_ret(struct pt_regs *ctx) { return mp_cu_free_return(ctx); }
