// memprobe: UVM CPU chunk allocations per (cgroup v2 id, process), by fentry on nvidia_uvm.
// Only loaded where the nvidia_uvm module is present with BTF and the kernel allows fentry
// (refused with EPERM on the CI VMs, docs/facts.md#f-vm). Arguments are not read: their
// layout differs between driver versions.

struct mp_uvm_key {
    u64 cgroup_id;
    u32 tgid;
    u32 pad;
};

BPF_HASH(mp_uvm_calls, struct mp_uvm_key, u64, 16384);

KFUNC_PROBE(uvm_cpu_chunk_alloc)
{
    struct mp_uvm_key key = {};
    key.cgroup_id = bpf_get_current_cgroup_id();
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    u64 one = 1;
    u64 *n = mp_uvm_calls.lookup(&key);
    if (n)
        __sync_fetch_and_add(n, 1);
    else
        mp_uvm_calls.update(&key, &one);
    return 0;
}
