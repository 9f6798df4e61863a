// memprobe: page faults per (cgroup v2 id, process), from the perf software event
// page-faults (attached with sample_period 1 on every CPU). Works on every architecture.
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

BPF_HASH(mp_faults, struct mp_fault_key, u64, MP_FAULT_ENTRIES);
BPF_HASH(mp_comms, u32, struct mp_comm, 32768);
BPF_ARRAY(mp_fault_lost, u64, 1);       // faults not counted: table full

int mp_fault(struct bpf_perf_event_data *ctx)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct mp_fault_key key = {};
    key.cgroup_id = bpf_get_current_cgroup_id();
    key.tgid = pid_tgid >> 32;
    u64 *n = mp_faults.lookup(&key);
    if (n) {
        __sync_fetch_and_add(n, 1);
        return 0;
    }
    u64 one = 1;
    if (mp_faults.update(&key, &one) != 0) {
        int z = 0;
        u64 *lost = mp_fault_lost.lookup(&z);
        if (lost)
            __sync_fetch_and_add(lost, 1);
        return 0;
    }
    struct mp_comm c = {};
    bpf_get_current_comm(&c.comm, sizeof(c.comm));
    u32 tgid = key.tgid;
    mp_comms.update(&tgid, &c);
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
