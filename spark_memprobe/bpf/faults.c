// memprobe: page faults per (cgroup v2 id, process), from the perf software event
// page-faults (attached with sample_period 1 on every CPU). Works on every architecture.
// Opt-in (--fault-events): the default counts come from /proc/<pid>/stat at no per-fault cost.
// Reads only helpers: no kernel struct is walked (headers may not match the kernel).
// ctx is only passed through, never read: no need for uapi/linux/bpf_perf_event.h, whose
// include alone costs about 1 s of compile time here.
struct bpf_perf_event_data;

#ifndef MP_FAULT_ENTRIES
#define MP_FAULT_ENTRIES 65536
#endif

struct mp_fault_key {
    u64 cgroup_id;      // bpf_get_current_cgroup_id(): cgroup v2 directory inode
    u32 tgid;           // host PID
    u32 pad;
};

struct mp_comm {
    char comm[16];
};

// Per CPU, the faults of the (cgroup, process) that faulted last on that CPU: a fault by the
// same process (the common case: a process touching its memory) is one per-CPU array slot
// increment, no hash lookup and no atomic. The slot is added into mp_faults when another
// process faults on that CPU; user space adds the slots still pending when it reads.
struct mp_fault_slot {
    struct mp_fault_key key;
    u64 n;
};

BPF_HASH(mp_faults, struct mp_fault_key, u64, MP_FAULT_ENTRIES);
BPF_PERCPU_ARRAY(mp_fault_slot, struct mp_fault_slot, 1);
BPF_HASH(mp_comms, u32, struct mp_comm, 32768);
BPF_ARRAY(mp_fault_lost, u64, 1);       // faults not counted: table full

static __always_inline void mp_fault_flush(struct mp_fault_key *key, u64 n)
{
    u64 *v = mp_faults.lookup(key);
    if (v) {
        __sync_fetch_and_add(v, n);
        return;
    }
    if (mp_faults.update(key, &n) != 0) {
        int z = 0;
        u64 *lost = mp_fault_lost.lookup(&z);
        if (lost)
            __sync_fetch_and_add(lost, n);
    }
}

int mp_fault(struct bpf_perf_event_data *ctx)
{
    int z = 0;
    struct mp_fault_slot *s = mp_fault_slot.lookup(&z);
    if (!s)
        return 0;
    u64 cg = bpf_get_current_cgroup_id();
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (s->n && s->key.cgroup_id == cg && s->key.tgid == tgid) {
        s->n++;
        return 0;
    }
    if (s->n)
        mp_fault_flush(&s->key, s->n);
    s->key.cgroup_id = cg;
    s->key.tgid = tgid;
    s->n = 1;
    if (!mp_comms.lookup(&tgid)) {      // the comm at the process's first fault
        struct mp_comm c = {};
        bpf_get_current_comm(&c.comm, sizeof(c.comm));
        mp_comms.update(&tgid, &c);
    }
    return 0;
}

// comm after exec: the comm saved at a process's first fault is often its parent's (a shell
// forks, faults, then execs), so each exec refreshes it (sched:sched_process_exec fires after
// the new comm is set, fs/exec.c exec_binprm)
int mp_exec(struct tracepoint__sched__sched_process_exec *args)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct mp_comm c = {};
    bpf_get_current_comm(&c.comm, sizeof(c.comm));
    mp_comms.update(&tgid, &c);
    return 0;
}
