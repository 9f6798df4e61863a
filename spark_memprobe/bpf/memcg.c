// memprobe: memcg stat updates summed IN THE KERNEL per (memcg id, item); nothing is sent per
// update (memcg tracepoints fire on every counter change, docs/facts.md#f-memcg-tracepoints).
// memcg:mod_memcg_state, memcg:mod_memcg_lruvec_state and memcg:count_memcg_events exist
// since Linux 6.13 (include/trace/events/memcg.h). Their `id` is cgroup_id() of the memcg's
// cgroup: the directory inode in the hierarchy that holds the memory controller (v1 memory
// hierarchy on hybrid hosts), not the v2 id of bpf_get_current_cgroup_id() and not
// mem_cgroup_id().

#ifndef MP_MEMCG_ENTRIES
#define MP_MEMCG_ENTRIES 16384
#endif

struct mp_mc_key {
    u64 memcg_id;
    s32 item;
    u32 source;         // 0 mod_memcg_state, 1 mod_memcg_lruvec_state, 2 count_memcg_events
};

// increases and decreases are summed apart: a charge undone within the run still shows
struct mp_mc_val {
    s64 inc;
    s64 dec;
};

// per-CPU sums: no atomic on this hot path; user space adds the CPUs up
BPF_PERCPU_HASH(mp_memcg, struct mp_mc_key, struct mp_mc_val, MP_MEMCG_ENTRIES);

static __always_inline void mp_mc_add(u64 id, s32 item, u32 source, s64 val)
{
    struct mp_mc_key key = {};
    key.memcg_id = id;
    key.item = item;
    key.source = source;
    struct mp_mc_val *v = mp_memcg.lookup(&key);
    if (v) {
        if (val > 0)
            v->inc += val;
        else
            v->dec += val;
        return;
    }
    struct mp_mc_val first = {};
    if (val > 0)
        first.inc = val;
    else
        first.dec = val;
    mp_memcg.update(&key, &first);
}

int mp_mc_state(struct tracepoint__memcg__mod_memcg_state *args)
{
    mp_mc_add(args->id, args->item, 0, args->val);
    return 0;
}

int mp_mc_lruvec(struct tracepoint__memcg__mod_memcg_lruvec_state *args)
{
    mp_mc_add(args->id, args->item, 1, args->val);
    return 0;
}

#ifdef MP_MEMCG_EVENTS
int mp_mc_event(struct tracepoint__memcg__count_memcg_events *args)
{
    mp_mc_add(args->id, args->item, 2, (s64)args->val);
    return 0;
}
#endif
