// memprobe: user page faults per (process, 2 MiB address region), from the x86 tracepoint
// exceptions:page_fault_user (arch/x86/include/asm/trace/exceptions.h; absent on arm64).
// Fields come from the running kernel's tracefs format file through bcc's args.

#ifndef MP_REGION_ENTRIES
#define MP_REGION_ENTRIES 65536
#endif
#define MP_REGION_SHIFT 21

struct mp_region_key {
    u32 tgid;
    u32 pad;
    u64 region;         // address >> MP_REGION_SHIFT
};

BPF_HASH(mp_fault_regions, struct mp_region_key, u64, MP_REGION_ENTRIES);

int mp_fault_user(struct tracepoint__exceptions__page_fault_user *args)
{
    struct mp_region_key key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    key.region = args->address >> MP_REGION_SHIFT;
    u64 *n = mp_fault_regions.lookup(&key);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return 0;
    }
    u64 one = 1;
    mp_fault_regions.update(&key, &one);
    return 0;
}
