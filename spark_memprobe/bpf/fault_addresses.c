// memprobe: user page faults per (process, 2 MiB address region), from the x86 tracepoint
// exceptions:page_fault_user (arch/x86/include/asm/trace/exceptions.h; absent on arm64),
// attached as a raw tracepoint: no trace record is built per fault. Its raw arguments are
// TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code): args[0]
// is the faulting address, no struct is read.

#ifndef MP_REGION_ENTRIES
#define MP_REGION_ENTRIES 65536
#endif
#define MP_REGION_SHIFT 21

struct mp_region_key {
    u32 tgid;
    u32 pad;
    u64 region;         // address >> MP_REGION_SHIFT
};

// Per CPU, the region faulted last and its pending count (as in faults.c): touching a region
// page by page is 511 slot increments and one hash update per 512 faults.
struct mp_region_slot {
    struct mp_region_key key;
    u64 n;
};

BPF_HASH(mp_fault_regions, struct mp_region_key, u64, MP_REGION_ENTRIES);
BPF_PERCPU_ARRAY(mp_region_slot, struct mp_region_slot, 1);

int mp_fault_user(struct bpf_raw_tracepoint_args *ctx)
{
    int z = 0;
    struct mp_region_slot *s = mp_region_slot.lookup(&z);
    if (!s)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 region = ctx->args[0] >> MP_REGION_SHIFT;
    if (s->n && s->key.tgid == tgid && s->key.region == region) {
        s->n++;
        return 0;
    }
    if (s->n) {
        u64 *v = mp_fault_regions.lookup(&s->key);
        if (v)
            __sync_fetch_and_add(v, s->n);
        else
            mp_fault_regions.update(&s->key, &s->n);
    }
    s->key.tgid = tgid;
    s->key.region = region;
    s->n = 1;
    return 0;
}
