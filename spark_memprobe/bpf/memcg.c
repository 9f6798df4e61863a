// memprobe: memcg stat updates summed IN THE KERNEL per (memcg id, item); nothing is sent per
// update (memcg tracepoints fire on every counter change, docs/facts.md#f-memcg-tracepoints).
// memcg:mod_memcg_state, memcg:mod_memcg_lruvec_state and memcg:count_memcg_events exist
// since Linux 6.13 (include/trace/events/memcg.h). Their `id` is cgroup_id() of the memcg's
// cgroup: the directory inode in the hierarchy that holds the memory controller (v1 memory
// hierarchy on hybrid hosts), not the v2 id of bpf_get_current_cgroup_id() and not
// mem_cgroup_id().
// Opt-in (--memcg-stream): on a fault-bound workload these tracepoints fire several times per
// fault; by default the deltas come from memory.stat read at start and end.

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

// Per CPU and per (source, item), the memcg updated last and its pending sums: a workload
// charging one cgroup is one per-CPU array slot update per tracepoint hit (array lookups are
// inlined by the verifier), no hash lookup. A slot is added into mp_memcg when another memcg
// updates the same item on that CPU; user space adds the slots still pending when it reads.
// Items at or above MP_MC_SLOTS (none in Linux 6.18's enums) go straight to the hash.
#define MP_MC_SLOTS 256
struct mp_mc_slot {
    u64 memcg_id;
    s64 inc;
    s64 dec;
};
BPF_PERCPU_ARRAY(mp_mc_slots, struct mp_mc_slot, 3 * MP_MC_SLOTS);

static __always_inline void mp_mc_hash_add(u64 id, s32 item, u32 source, s64 inc, s64 dec)
{
    struct mp_mc_key key = {};
    key.memcg_id = id;
    key.item = item;
    key.source = source;
    struct mp_mc_val *v = mp_memcg.lookup(&key);
    if (v) {
        v->inc += inc;
        v->dec += dec;
        return;
    }
    struct mp_mc_val first = {};
    first.inc = inc;
    first.dec = dec;
    mp_memcg.update(&key, &first);
}

static __always_inline void mp_mc_add(u64 id, s32 item, u32 source, s64 val)
{
    s64 inc = val > 0 ? val : 0;
    s64 dec = val > 0 ? 0 : val;
    if (item < 0 || item >= MP_MC_SLOTS) {
        mp_mc_hash_add(id, item, source, inc, dec);
        return;
    }
    int i = source * MP_MC_SLOTS + item;
    struct mp_mc_slot *s = mp_mc_slots.lookup(&i);
    if (!s)
        return;
    if (s->memcg_id != id) {
        if (s->inc || s->dec)
            mp_mc_hash_add(s->memcg_id, item, source, s->inc, s->dec);
        s->memcg_id = id;
        s->inc = 0;
        s->dec = 0;
    }
    s->inc += inc;
    s->dec += dec;
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
