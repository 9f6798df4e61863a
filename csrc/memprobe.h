/* spark_memprobe native sampler: the one struct layout shared by C and Python.
 *
 * The part between CDEF BEGIN and CDEF END is fed verbatim to cffi's cdef()
 * (spark_memprobe/_build_native.py), so Python sees exactly this layout.
 * Keep it to what cdef understands: integer #defines, enums, structs, prototypes.
 *
 * Conventions: every function returns 0 or -errno and never prints; values that
 * could not be read are MP_MISSING (Python turns them into None, never 0);
 * "max" in a limit file is MP_UNLIMITED.
 */
#ifndef MEMPROBE_H
#define MEMPROBE_H
#include <stdint.h>

/* CDEF BEGIN */
#define MP_MISSING   -9223372036854775807
#define MP_UNLIMITED 9223372036854775807
#define MP_KEYLEN 48
#define MP_MEMINFO_KEYS 128
#define MP_VMSTAT_KEYS 384
#define MP_CGSTAT_KEYS 160
#define MP_CGEVENTS_KEYS 16
#define MP_STATUS_KEYS 8
#define MP_PROCS_MAX 64
#define MP_GPUS_MAX 8
#define MP_GPU_PROCS_MAX 64
#define MP_PRESSURE_VALUES 8

/* Files of one target, by slot.  Which kernel file sits in a slot is decided in
 * Python (cgroup v2 or v1 names); C only knows the file's format. */
enum mp_slot {
    MP_SLOT_MEMINFO = 0,     /* key: value kB        /proc/meminfo */
    MP_SLOT_VMSTAT,          /* key value            /proc/vmstat */
    MP_SLOT_CG_STAT,         /* key value            memory.stat */
    MP_SLOT_CG_EVENTS,       /* key value            memory.events (v2) / memory.oom_control (v1) */
    MP_SLOT_CG_CURRENT,      /* one value            memory.current / memory.usage_in_bytes */
    MP_SLOT_CG_PEAK,         /* one value            memory.peak / memory.max_usage_in_bytes */
    MP_SLOT_CG_MAX,          /* one value or "max"   memory.max / memory.limit_in_bytes */
    MP_SLOT_CG_HIGH,         /* one value or "max"   memory.high */
    MP_SLOT_CG_SWAP,         /* one value            memory.swap.current */
    MP_SLOT_CG_FAILCNT,      /* one value            memory.failcnt (v1) */
    MP_SLOT_CG_KMEM,         /* one value            memory.kmem.usage_in_bytes (v1) */
    MP_SLOT_CG_PRESSURE,     /* PSI lines            memory.pressure */
    MP_NSLOTS
};

/* Per file: how the last read went. */
struct mp_filehdr {
    int32_t err;        /* 0, -errno of open/pread, or -EBADMSG when nothing parsed */
    int32_t nkeys;      /* keys known for this file (the key table only grows) */
    int32_t bad_lines;  /* lines that did not match the grammar and were skipped */
    int32_t truncated;  /* 1: last line had no newline, or the file filled the buffer */
};

struct mp_proc {
    int32_t pid;
    struct mp_filehdr status_hdr;        /* /proc/<pid>/status */
    int64_t status[MP_STATUS_KEYS];      /* order: mp_status_keys() */
};

struct mp_gpu_proc {
    uint32_t pid;                        /* host PID, as NVML reports it */
    int32_t kind;                        /* 0 compute, 1 graphics, 2 MPS compute */
    int64_t used_bytes;                  /* MP_MISSING when NVML says NOT_AVAILABLE */
};

struct mp_gpu {
    int32_t mem_err;                     /* 0 or the nvmlReturn_t of the memory call (3 = NOT_SUPPORTED) */
    int32_t procs_err;                   /* 0 or the nvmlReturn_t of the process calls */
    int64_t total_bytes, free_bytes, used_bytes, reserved_bytes;   /* nvmlDeviceGetMemoryInfo_v2 */
    int32_t nprocs;
    int32_t procs_truncated;
    struct mp_gpu_proc procs[MP_GPU_PROCS_MAX];
};

struct mp_sample {
    int64_t mono_ns;                     /* CLOCK_MONOTONIC when the tick started */
    int64_t wall_ns;                     /* CLOCK_REALTIME when the tick started */
    int64_t read_ns;                     /* how long the tick took */
    int64_t stat_mono_ns;                /* mono_ns of the tick that read cg_stat and procs[].status:
                                          * mono_ns when read now, older when carried (mp_target_set_skip) */
    struct mp_filehdr hdr[MP_NSLOTS];
    int64_t meminfo[MP_MEMINFO_KEYS];    /* bytes where the line said kB, else the raw count */
    int64_t vmstat[MP_VMSTAT_KEYS];
    int64_t cg_stat[MP_CGSTAT_KEYS];
    int64_t cg_events[MP_CGEVENTS_KEYS];
    int64_t cg_current, cg_peak, cg_max, cg_high, cg_swap, cg_failcnt, cg_kmem;
    int64_t pressure[MP_PRESSURE_VALUES]; /* some avg10, avg60, avg300 (hundredths of %), total us; then full */
    int32_t nprocs;
    struct mp_proc procs[MP_PROCS_MAX];
    int32_t nvml_err;                    /* 0, or why NVML was not read (-ENOENT: no library) */
    int32_t ngpus;
    struct mp_gpu gpus[MP_GPUS_MAX];
};

struct mp_target;

struct mp_target *mp_target_new(void);
void mp_target_free(struct mp_target *t);
int mp_target_set_file(struct mp_target *t, int slot, const char *path);
int mp_target_set_pids(struct mp_target *t, const char *proc_root, const int32_t *pids, int n);
int mp_target_set_nvml(struct mp_target *t, int on);
int mp_key_name(struct mp_target *t, int slot, int idx, char *out, int outlen);
int mp_key_is_kb(struct mp_target *t, int slot, int idx);
const char *mp_status_key(int idx);

/* Poll less (docs/performance.md): with max_age_ns > 0, mp_sample_once carries cg_stat and the
 * processes' status from the last tick that read them while the usage counter (cg_current) has
 * not moved since, the process set is the same and that read is younger than max_age_ns;
 * stat_mono_ns then says when they were read.  0 turns it off (the default).  The ring thread
 * always reads everything. */
int mp_target_set_skip(struct mp_target *t, int64_t max_age_ns);
int mp_sample_once(struct mp_target *t, struct mp_sample *out);

/* Ring flags.  NVML is left out of the ring unless asked for: one NVML query takes
 * longer than a 1 ms tick (docs/record.md, burst mode). */
#define MP_RING_NVML 1
int mp_sampler_start(struct mp_target *t, int64_t interval_ns, int capacity, int flags);
int mp_sampler_drain(struct mp_target *t, struct mp_sample *out, int max, uint64_t *dropped);

/* Burst records (docs/record.md).  A sample as one vector of int64 "raw" values, in this
 * order; what a sample does not hold (keys past nkeys, processes past nprocs) is 0:
 *   mono_ns, wall_ns, read_ns; per slot (enum mp_slot) err, nkeys, bad_lines, truncated;
 *   meminfo[], vmstat[], cg_stat[], cg_events[]; cg_current, cg_peak, cg_max, cg_high,
 *   cg_swap, cg_failcnt, cg_kmem; pressure[]; nprocs; per process pid, err, nkeys,
 *   bad_lines, truncated, status[].  GPUs are not in it.
 * A batch of n samples packs into columns, little-endian, zlib left to the caller:
 *   u32 MP_PACK_VERSION, u32 n, u32 ncols, then per column that is not 0 throughout:
 *   u32 index, u32 nchanges, i64 first value, u32 position[nchanges] (1..n-1),
 *   i64 delta[nchanges] (new value minus the previous one). */
#define MP_PACK_VERSION 1
#define MP_RAW_MONO 0
#define MP_RAW_HDR 3
#define MP_RAW_MEMINFO 51
#define MP_RAW_VMSTAT 179
#define MP_RAW_CGSTAT 563
#define MP_RAW_CGEVENTS 723
#define MP_RAW_SINGLE 739
#define MP_RAW_PRESSURE 746
#define MP_RAW_NPROCS 754
#define MP_RAW_PROCS 755
#define MP_RAW_PROC_STRIDE 13
#define MP_RAW_LEN 1587
#define MP_PACK_MAX 256
int64_t mp_pack_bound(int n);
int64_t mp_pack(const struct mp_sample *in, int n, uint8_t *out, int64_t outlen);
int64_t mp_sampler_drain_packed(struct mp_target *t, uint8_t *out, int64_t outlen, int max,
                                int *nsamples, uint64_t *dropped);
int mp_sampler_stop(struct mp_target *t);

/* Flight base ticks (feed/flight.py): sample once as mp_sample_once does and compare the raw
 * vector with the one kept by the last call or by mp_delta_base.  Returns how many value
 * columns changed, their indices and new values in cols/vals (mono_ns, wall_ns and read_ns
 * are among them), and keeps this vector; or MP_DELTA_WHOLE, keeping nothing, when there is no
 * kept vector, memory.stat and the status files were carried (mp_target_set_skip), a header
 * column (an error, a key count, a bad line, a cut read), nprocs or a pid changed, a value
 * went to or from MP_MISSING, or more than max changed: the caller then builds the whole
 * sample from out and calls mp_delta_base(t, out) with it. */
#define MP_DELTA_WHOLE -1
int mp_sample_delta(struct mp_target *t, struct mp_sample *out, int32_t *cols, int64_t *vals, int max);
void mp_delta_base(struct mp_target *t, const struct mp_sample *s);
/* A flight base row from what changed, encoded here (feed/flat_delta.py, recording.py add_row):
 * the Python of a busy target's row (mapping columns to paths, JSON, deflate) cost about as much
 * as its reads (docs/performance.md, Issue 22).  A column's paths in the recording are the ids
 * ids[start[c]] .. ids[start[c + 1] - 1] (a v1 stat column is two paths), each with its kind: a
 * plain integer, hundredths (written as v / 100) or a limit ("max" when MP_UNLIMITED or at least
 * limit_floor; 0: no floor).  scal_cols: the columns of recording.py SCALARS' cgroup values. */
#define MP_ROW_ITEMS_MAX 3174
#define MP_ROW_INT 0
#define MP_ROW_HUNDREDTHS 1
#define MP_ROW_LIMIT 2
#define MP_ROW_SCALARS 7
struct mp_rowmap {
    int32_t start[MP_RAW_LEN + 1];
    int32_t ids[MP_ROW_ITEMS_MAX];
    uint8_t kinds[MP_ROW_ITEMS_MAX];
    int64_t limit_floor;
    int32_t scal_cols[MP_ROW_SCALARS];
};
/* mp_sample_delta, then the changed columns as the JSON text [[id,value],...] followed by
 * extra items: x_ids[i] with x_vals[i] (MP_MISSING: null) where x_on[i] (the host's meminfo
 * values that moved, recording ids of this file), zlib-deflated into blob when deflate is set.
 * cols/vals get the changed columns (as mp_sample_delta's), *nchanged their count; scal the
 * current values of m->scal_cols (MP_MISSING: none); since_cols/since_vals the columns whose value
 * differs from the vector kept by mp_delta_base (the sample as a whole, with the kept whole
 * sample: FlatDelta), *nsince their count.  Returns the bytes in blob, or
 * MP_DELTA_WHOLE, keeping nothing, when mp_sample_delta did or a changed column has no path
 * (the caller builds the whole sample), or -ENOSPC: blob (or the JSON, 64 KiB) too small. */
int mp_delta_row(struct mp_target *t, struct mp_sample *out, int32_t *cols, int64_t *vals,
                 const struct mp_rowmap *m, const int32_t *x_ids, const int64_t *x_vals,
                 const uint8_t *x_on, int nx, int deflate, int *nchanged, int64_t *scal,
                 int32_t *since_cols, int64_t *since_vals, int *nsince, uint8_t *blob, int cap);
/* row.c, for mp_delta_row (and tests): the JSON text of a row's items into out (its length, -1:
 * a column without a path, -ENOSPC), and recording.py deflate's zlib stream of it (its size, or
 * -ENOSPC). */
int mp_row_text(const struct mp_rowmap *m, const int32_t *cols, const int64_t *vals, int n,
                const int32_t *x_ids, const int64_t *x_vals, const uint8_t *x_on, int nx, char *out, int cap);
int mp_row_deflate(const char *text, int len, uint8_t *blob, int cap);
/* With a cgroup directory watched (mp_procs_watch: opened O_PATH, never through a link), the
 * kept vector is only kept (mp_delta_base) after mp_procs_mark read its cgroup.procs, and
 * mp_sample_delta answers MP_DELTA_WHOLE unless the directory still has no child cgroup (kernfs
 * counts 2 + subdirectories) and cgroup.procs, opened anew (a kept v1 descriptor reads a cached
 * pid list: docs/facts.md#f-v1-procs-cached), reads as at the mark: the caller marks before it
 * lists the processes, so one that joined since is seen.  keep_open (cgroup v2 only:
 * docs/facts.md#f-v2-procs-fresh): cgroup.procs is opened once and read again at offset 0. */
int mp_procs_watch(struct mp_target *t, const char *cgroup_dir, int keep_open);
int mp_procs_mark(struct mp_target *t);

/* The flight recorder's 100 ms ring (feed/flight.py): one pread at offset 0 of each of n
 * descriptors, up to caps[i] bytes, the texts one after another in buf; lens[i] is the bytes
 * read or -errno (-ENOSPC: buf was full).  Returns the bytes used in buf. */
int64_t mp_pread_many(const int *fds, const int32_t *caps, int n, char *buf, int64_t buflen, int32_t *lens);

/* The same reads every interval_ns in a thread of its own (csrc/ring.c), kept in the last `slots`
 * entries, numbered from 1: Python wakes once a base period instead of ten times a second.  The
 * descriptors (notify_fd too) are duplicated: the caller may close its own.  avail_below_bytes > 0: fds[0] is
 * /proc/meminfo, and each time its MemAvailable falls below that (from at or above it; `low`
 * says where it starts) the thread adds 1 to the eventfd notify_fd.  *err: 0 or -errno. */
struct mp_ring;
struct mp_ring *mp_ring_start(const int *fds, const int32_t *caps, int n, int64_t interval_ns, int slots,
                              int64_t avail_below_bytes, int low, int notify_fd, int *err);
/* The entries after number `after` (MP_RING_NEWEST: the newest alone), oldest first, up to max:
 * each one's number, times, bytes (its texts one after another in buf) and n lens (as
 * mp_pread_many's).  Returns how many were copied, or -ENOSPC when buf cannot hold the first. */
#define MP_RING_NEWEST 0xffffffffffffffff
int mp_ring_copy(struct mp_ring *r, uint64_t after, int max, uint64_t *seq, int64_t *mono, int64_t *wall,
                 int64_t *used, char *buf, int64_t buflen, int32_t *lens);
/* The last MemAvailable read, bytes (-1: none); *low: it was below avail_below_bytes. */
int64_t mp_ring_avail(struct mp_ring *r, int *low);
void mp_ring_stop(struct mp_ring *r);          /* joins the thread, closes its descriptors, frees */
int64_t mp_sampler_cpu_ns(struct mp_target *t);

/* Parse one buffer with the kv grammar into a fresh key table: used by the parity
 * and fuzz tests to run the exact C parser on any bytes. */
int mp_parse_kv_buffer(const char *buf, int len, char *keys_out, int64_t *vals_out,
                       uint8_t *kb_out, int maxkeys, struct mp_filehdr *hdr);
int mp_parse_single(const char *buf, int len, int64_t *val);
int mp_parse_pressure(const char *buf, int len, int64_t *out);
/* CDEF END */

#include <time.h>

/* A clock in ns (C only: sampler.c, ring.c). */
static inline int64_t mp_clock_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#endif
