// memprobe: page-cache pages per (cgroup v2 id, device, inode).
// filemap:mm_filemap_add_to_page_cache / mm_filemap_delete_from_page_cache carry s_dev, i_ino,
// index and order of the folio (include/trace/events/filemap.h). The owner of each folio is
// remembered at insertion, keyed by (dev, inode, index), and removals are subtracted from that
// owner: removal is often done by kswapd or another task, so the cgroup current at removal is
// not the owner (docs/facts.md#f-owner-at-insert).

#ifndef MP_PC_OWNER_ENTRIES
#define MP_PC_OWNER_ENTRIES 1048576
#endif
#ifndef MP_PC_FILE_ENTRIES
#define MP_PC_FILE_ENTRIES 65536
#endif

struct mp_pc_page {
    u64 ino;
    u64 index;
    u32 dev;            // kernel dev_t: major << 20 | minor
    u32 pad;
};

struct mp_pc_owner {
    u64 cgroup_id;
    u32 tgid;
    u32 nr;             // pages in the folio at insertion
};

struct mp_pc_key {
    u64 cgroup_id;      // owner; 0 = owner unknown (cached before the probes started)
    u64 ino;
    u32 dev;
    u32 pad;
};

struct mp_pc_val {
    u64 added;
    u64 removed;
    u64 removed_by_other;
    u32 last_tgid;
    u32 pad;
};

// not preallocated: entries cost memory only while the pages are cached
BPF_F_TABLE("hash", struct mp_pc_page, struct mp_pc_owner, mp_pc_owner, MP_PC_OWNER_ENTRIES, BPF_F_NO_PREALLOC);
BPF_HASH(mp_pc_files, struct mp_pc_key, struct mp_pc_val, MP_PC_FILE_ENTRIES);
// 0: pages added while the owner table was full (their removal counts as owner unknown)
// 1: pages not counted because the file table was full
BPF_ARRAY(mp_pc_stats, u64, 2);

static __always_inline void mp_pc_stat(int i, u64 n)
{
    u64 *v = mp_pc_stats.lookup(&i);
    if (v)
        __sync_fetch_and_add(v, n);
}

static __always_inline struct mp_pc_val *mp_pc_file(struct mp_pc_key *key)
{
    struct mp_pc_val *v = mp_pc_files.lookup(key);
    if (v)
        return v;
    struct mp_pc_val zero = {};
    mp_pc_files.update(key, &zero);     // BPF_ANY: a racing insert is harmless
    return mp_pc_files.lookup(key);
}

int mp_pc_add(struct tracepoint__filemap__mm_filemap_add_to_page_cache *args)
{
    u32 nr = 1U << (args->order & 31);
    u64 cg = bpf_get_current_cgroup_id();
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct mp_pc_page page = {};
    page.ino = args->i_ino;
    page.index = args->index;
    page.dev = args->s_dev;
    struct mp_pc_owner owner = {};
    owner.cgroup_id = cg;
    owner.tgid = tgid;
    owner.nr = nr;
    if (mp_pc_owner.update(&page, &owner) != 0)
        mp_pc_stat(0, nr);
    struct mp_pc_key key = {};
    key.cgroup_id = cg;
    key.ino = page.ino;
    key.dev = page.dev;
    struct mp_pc_val *v = mp_pc_file(&key);
    if (!v) {
        mp_pc_stat(1, nr);
        return 0;
    }
    __sync_fetch_and_add(&v->added, nr);
    v->last_tgid = tgid;
    return 0;
}

int mp_pc_delete(struct tracepoint__filemap__mm_filemap_delete_from_page_cache *args)
{
    u32 nr = 1U << (args->order & 31);
    struct mp_pc_page page = {};
    page.ino = args->i_ino;
    page.index = args->index;
    page.dev = args->s_dev;
    struct mp_pc_key key = {};
    key.ino = page.ino;
    key.dev = page.dev;
    u64 cur = bpf_get_current_cgroup_id();
    struct mp_pc_owner *o = mp_pc_owner.lookup(&page);
    u64 other = 0;
    if (o) {
        key.cgroup_id = o->cgroup_id;
        other = o->cgroup_id != cur;
        mp_pc_owner.delete(&page);
    }
    struct mp_pc_val *v = mp_pc_file(&key);
    if (!v) {
        mp_pc_stat(1, nr);
        return 0;
    }
    __sync_fetch_and_add(&v->removed, nr);
    if (other)
        __sync_fetch_and_add(&v->removed_by_other, nr);
    return 0;
}
