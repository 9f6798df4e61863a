/* Native sampler: open a target's files once, re-read them with pread at offset 0
 * (which makes procfs and cgroupfs regenerate the text, see docs/facts.md#f-pread-regenerates),
 * parse into struct mp_sample, and optionally loop in a thread into a ring buffer.
 * Nothing here allocates or prints per tick. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "memprobe.h"
#include "nvml.h"
#include "parse.h"

#define MP_BUFSZ 65536
#define MP_PROCS_TEXT_MAX MP_BUFSZ     /* cgroup.procs text compared by mp_sample_delta (~9000 pids) */

static const char *status_keys[MP_STATUS_KEYS] = {
    "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap", "VmHWM", "VmSize", "VmPTE",
};

struct mp_target {
    pthread_mutex_t lock;                 /* files, pids and key tables; held for a whole tick */
    int fd[MP_NSLOTS];
    struct mp_kvtable tab[4];             /* meminfo, vmstat, cg stat, cg events */
    char keys_meminfo[MP_MEMINFO_KEYS][MP_KEYLEN];
    char keys_vmstat[MP_VMSTAT_KEYS][MP_KEYLEN];
    char keys_cgstat[MP_CGSTAT_KEYS][MP_KEYLEN];
    char keys_cgevents[MP_CGEVENTS_KEYS][MP_KEYLEN];
    int klen_all[MP_MEMINFO_KEYS + MP_VMSTAT_KEYS + MP_CGSTAT_KEYS + MP_CGEVENTS_KEYS];
    uint8_t kb_all[MP_MEMINFO_KEYS + MP_VMSTAT_KEYS + MP_CGSTAT_KEYS + MP_CGEVENTS_KEYS];
    char status_keytab[MP_STATUS_KEYS][MP_KEYLEN];
    int status_klen[MP_STATUS_KEYS];
    uint8_t status_kb[MP_STATUS_KEYS];
    int nprocs;
    int32_t pids[MP_PROCS_MAX];
    int pid_fd[MP_PROCS_MAX];
    int pid_err[MP_PROCS_MAX];
    struct mp_nvml nvml;
    int nvml_on;
    char *buf;

    /* poll less: the last full read of cg_stat and the status files (mp_target_set_skip) */
    int64_t skip_max_age_ns;              /* 0: read everything every tick */
    int full_valid;                       /* 0: the next tick reads in full */
    int64_t full_mono_ns, full_current;
    struct mp_filehdr full_stat_hdr;
    int64_t full_stat[MP_CGSTAT_KEYS];
    struct mp_proc full_procs[MP_PROCS_MAX];

    /* sampler thread */
    pthread_t thr;
    int running;
    int stop;
    int64_t interval_ns;
    int ring_flags;
    int64_t *raw;                         /* MP_PACK_MAX raw vectors: the drainer's, outside ring_lock */
    int64_t *delta;                       /* mp_sample_delta: the kept vector, then the new one */
    int delta_valid;
    int procs_dirfd;                      /* mp_procs_watch: the cgroup directory, O_PATH; -1: none */
    int procs_keep, procs_fd;             /* v2: cgroup.procs kept open (-1: not open) */
    char *procs_text;                     /* cgroup.procs at mp_procs_mark */
    int procs_len;                        /* its length; -1: not marked */
    pthread_mutex_t ring_lock;
    pthread_cond_t wake;
    struct mp_sample *ring;
    struct mp_sample scratch;
    int cap, head, count;
    uint64_t dropped;
    int64_t cpu_ns;
};

static struct mp_kvtable *slot_table(struct mp_target *t, int slot)
{
    switch (slot) {
    case MP_SLOT_MEMINFO: return &t->tab[0];
    case MP_SLOT_VMSTAT: return &t->tab[1];
    case MP_SLOT_CG_STAT: return &t->tab[2];
    case MP_SLOT_CG_EVENTS: return &t->tab[3];
    default: return NULL;
    }
}

static void table_init(struct mp_kvtable *tab, char (*keys)[MP_KEYLEN], int *klen, uint8_t *kb, int max)
{
    memset(tab, 0, sizeof(*tab));
    tab->keys = keys;
    tab->klen = klen;
    tab->kb = kb;
    tab->max = max;
}

struct mp_target *mp_target_new(void)
{
    struct mp_target *t = calloc(1, sizeof(*t));
    int off = 0;

    if (!t)
        return NULL;
    t->buf = malloc(MP_BUFSZ);
    if (!t->buf) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    pthread_mutex_init(&t->ring_lock, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&t->wake, &ca);
        pthread_condattr_destroy(&ca);
    }
    for (int i = 0; i < MP_NSLOTS; i++)
        t->fd[i] = -1;
    table_init(&t->tab[0], t->keys_meminfo, t->klen_all + off, t->kb_all + off, MP_MEMINFO_KEYS);
    off += MP_MEMINFO_KEYS;
    table_init(&t->tab[1], t->keys_vmstat, t->klen_all + off, t->kb_all + off, MP_VMSTAT_KEYS);
    off += MP_VMSTAT_KEYS;
    table_init(&t->tab[2], t->keys_cgstat, t->klen_all + off, t->kb_all + off, MP_CGSTAT_KEYS);
    off += MP_CGSTAT_KEYS;
    table_init(&t->tab[3], t->keys_cgevents, t->klen_all + off, t->kb_all + off, MP_CGEVENTS_KEYS);
    for (int i = 0; i < MP_STATUS_KEYS; i++) {
        t->status_klen[i] = (int)strlen(status_keys[i]);
        memcpy(t->status_keytab[i], status_keys[i], (size_t)t->status_klen[i] + 1);
    }
    for (int i = 0; i < MP_PROCS_MAX; i++)
        t->pid_fd[i] = -1;
    t->procs_dirfd = -1;
    t->procs_fd = -1;
    t->procs_len = -1;
    return t;
}

static void close_pids(struct mp_target *t)
{
    for (int i = 0; i < t->nprocs; i++)
        if (t->pid_fd[i] >= 0) {
            close(t->pid_fd[i]);
            t->pid_fd[i] = -1;
        }
    t->nprocs = 0;
}

void mp_target_free(struct mp_target *t)
{
    if (!t)
        return;
    mp_sampler_stop(t);
    for (int i = 0; i < MP_NSLOTS; i++)
        if (t->fd[i] >= 0)
            close(t->fd[i]);
    close_pids(t);
    mp_nvml_close(&t->nvml);
    pthread_mutex_destroy(&t->lock);
    pthread_mutex_destroy(&t->ring_lock);
    pthread_cond_destroy(&t->wake);
    free(t->ring);
    free(t->raw);
    free(t->delta);
    free(t->procs_text);
    if (t->procs_dirfd >= 0)
        close(t->procs_dirfd);
    if (t->procs_fd >= 0)
        close(t->procs_fd);
    free(t->buf);
    free(t);
}

static int open_ro(const char *path)
{
    /* O_NOFOLLOW: kernel files are never links; a link here was planted (we run as root) */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    return fd < 0 ? -errno : fd;
}

int mp_target_set_file(struct mp_target *t, int slot, const char *path)
{
    int fd = -1;

    if (slot < 0 || slot >= MP_NSLOTS)
        return -EINVAL;
    if (path) {
        fd = open_ro(path);
        if (fd < 0)
            return fd;
    }
    pthread_mutex_lock(&t->lock);
    if (t->fd[slot] >= 0)
        close(t->fd[slot]);
    t->fd[slot] = fd;
    t->full_valid = 0;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

int mp_target_set_pids(struct mp_target *t, const char *proc_root, const int32_t *pids, int n)
{
    char path[4096];

    if (n < 0 || n > MP_PROCS_MAX)
        return -E2BIG;
    pthread_mutex_lock(&t->lock);
    close_pids(t);
    for (int i = 0; i < n; i++) {
        int fd;
        t->pids[i] = pids[i];
        snprintf(path, sizeof(path), "%s/%d/status", proc_root, (int)pids[i]);
        fd = open_ro(path);
        t->pid_fd[i] = fd >= 0 ? fd : -1;
        t->pid_err[i] = fd >= 0 ? 0 : fd;
    }
    t->nprocs = n;
    t->full_valid = 0;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

int mp_target_set_skip(struct mp_target *t, int64_t max_age_ns)
{
    if (max_age_ns < 0)
        return -EINVAL;
    pthread_mutex_lock(&t->lock);
    t->skip_max_age_ns = max_age_ns;
    t->full_valid = 0;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

int mp_target_set_nvml(struct mp_target *t, int on)
{
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    if (on && !t->nvml_on)
        rc = mp_nvml_open(&t->nvml);
    else if (!on && t->nvml_on)
        mp_nvml_close(&t->nvml);
    t->nvml_on = on && rc == 0;
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int mp_key_name(struct mp_target *t, int slot, int idx, char *out, int outlen)
{
    struct mp_kvtable *tab = slot_table(t, slot);
    int n;

    if (!tab || outlen <= 0)
        return -EINVAL;
    n = __atomic_load_n(&tab->n, __ATOMIC_ACQUIRE);
    if (idx < 0 || idx >= n)
        return -ENOENT;
    if (tab->klen[idx] >= outlen)
        return -ENAMETOOLONG;
    memcpy(out, tab->keys[idx], (size_t)tab->klen[idx] + 1);
    return tab->klen[idx];
}

int mp_key_is_kb(struct mp_target *t, int slot, int idx)
{
    struct mp_kvtable *tab = slot_table(t, slot);
    if (!tab || idx < 0 || idx >= __atomic_load_n(&tab->n, __ATOMIC_ACQUIRE))
        return -EINVAL;
    return tab->kb[idx];
}

const char *mp_status_key(int idx)
{
    return (idx >= 0 && idx < MP_STATUS_KEYS) ? status_keys[idx] : NULL;
}

/* Longest record of a multi-record file read here: /proc/vmstat's are "name value\n" lines of
 * under 64 bytes; the other files are one record each (one show call), returned whole. */
#define MP_RECORD_MAX 256

static ssize_t pread_intr(int fd, char *buf, size_t len, off_t off)
{
    ssize_t n;

    do
        n = pread(fd, buf, len, off);
    while (n < 0 && errno == EINTR);
    return n;
}

/* pread the whole file at offset 0 into t->buf.  Returns length or -errno.
 * *full is set when the file did not fit (the text would be cut).
 * A read of a multi-record seq_file can return less than the file although more follows:
 * it stops once the next record would overflow its buffer (fs/seq_file.c seq_read_iter;
 * docs/facts.md#f-seq-read-short), so it returned more than (buffer - one record), and the
 * buffer is at least a page.  A first read shorter than (page - MP_RECORD_MAX) was therefore
 * the whole file (one pread, the common case at 1 kHz); a longer one is continued at the
 * offset reached until pread returns 0 or the buffer is full. */
static int read_fd(struct mp_target *t, int fd, int *full)
{
    size_t got;
    ssize_t n;

    n = pread_intr(fd, t->buf, MP_BUFSZ, 0);
    if (n < 0)
        return -errno;
    got = (size_t)n;
    if (got + MP_RECORD_MAX >= (size_t)sysconf(_SC_PAGESIZE)) {
        while (got < MP_BUFSZ) {
            n = pread_intr(fd, t->buf + got, MP_BUFSZ - got, (off_t)got);
            if (n < 0)
                return -errno;
            if (n == 0)
                break;
            got += (size_t)n;
        }
    }
    *full = got == MP_BUFSZ;
    return (int)got;
}

static void read_kv(struct mp_target *t, int slot, int64_t *vals, struct mp_filehdr *hdr)
{
    struct mp_kvtable *tab = slot_table(t, slot);
    int full = 0, n;

    memset(hdr, 0, sizeof(*hdr));
    if (t->fd[slot] < 0) {
        for (int i = 0; i < tab->max; i++)
            vals[i] = MP_MISSING;
        hdr->err = -EBADF;
        hdr->nkeys = tab->n;
        return;
    }
    n = read_fd(t, t->fd[slot], &full);
    if (n < 0) {
        for (int i = 0; i < tab->max; i++)
            vals[i] = MP_MISSING;
        hdr->err = n;
        hdr->nkeys = tab->n;
        return;
    }
    mp_parse_kv(t->buf, n, full, tab, vals, hdr);
}

static void read_single(struct mp_target *t, int slot, int64_t *val, struct mp_filehdr *hdr)
{
    int full = 0, n;

    memset(hdr, 0, sizeof(*hdr));
    *val = MP_MISSING;
    if (t->fd[slot] < 0) {
        hdr->err = -EBADF;
        return;
    }
    n = read_fd(t, t->fd[slot], &full);
    if (n < 0) {
        hdr->err = n;
        return;
    }
    hdr->err = mp_parse_single(t->buf, n, val);
    if (hdr->err)
        *val = MP_MISSING;
}

static void read_procs(struct mp_target *t, struct mp_sample *s)
{
    int full, n;

    s->nprocs = t->nprocs;
    for (int i = 0; i < t->nprocs; i++) {
        struct mp_proc *p = &s->procs[i];
        struct mp_kvtable st = {
            .n = MP_STATUS_KEYS, .max = MP_STATUS_KEYS, .closed = 1,
            .keys = t->status_keytab, .klen = t->status_klen, .kb = t->status_kb,
        };
        p->pid = t->pids[i];
        memset(&p->status_hdr, 0, sizeof(p->status_hdr));
        if (t->pid_fd[i] < 0) {
            p->status_hdr.err = t->pid_err[i];
        } else if ((n = read_fd(t, t->pid_fd[i], &full)) < 0) {
            p->status_hdr.err = n;     /* ESRCH once the process has exited */
        } else {
            mp_parse_kv(t->buf, n, full, &st, p->status, &p->status_hdr);
            continue;
        }
        for (int k = 0; k < MP_STATUS_KEYS; k++)
            p->status[k] = MP_MISSING;
    }
}

/* Carry cg_stat and the status values of the last full read?  Only while the usage counter
 * has not moved since it, and it is younger than skip_max_age_ns: counters such as pgfault and
 * the LRU split (active/inactive) move without the usage moving, which the age bounds. */
static int carry_full(struct mp_target *t, const struct mp_sample *s)
{
    return t->skip_max_age_ns > 0 && t->full_valid && s->hdr[MP_SLOT_CG_CURRENT].err == 0 &&
           s->cg_current == t->full_current && s->mono_ns - t->full_mono_ns < t->skip_max_age_ns;
}

/* Keep this full read for the ticks after it: only one that read every file cleanly. */
static void keep_full(struct mp_target *t, const struct mp_sample *s)
{
    t->full_valid = s->hdr[MP_SLOT_CG_CURRENT].err == 0 && s->hdr[MP_SLOT_CG_STAT].err == 0 &&
                    !s->hdr[MP_SLOT_CG_STAT].bad_lines && !s->hdr[MP_SLOT_CG_STAT].truncated;
    for (int i = 0; i < s->nprocs && t->full_valid; i++)
        t->full_valid = s->procs[i].status_hdr.err == 0 && !s->procs[i].status_hdr.bad_lines &&
                        !s->procs[i].status_hdr.truncated;
    if (!t->full_valid)
        return;
    t->full_mono_ns = s->mono_ns;
    t->full_current = s->cg_current;
    t->full_stat_hdr = s->hdr[MP_SLOT_CG_STAT];
    memcpy(t->full_stat, s->cg_stat, sizeof(t->full_stat));
    memcpy(t->full_procs, s->procs, (size_t)s->nprocs * sizeof(s->procs[0]));
}

static int sample_into(struct mp_target *t, struct mp_sample *s, int nvml, int skip)
{
    struct mp_filehdr ph;
    int full, n;

    pthread_mutex_lock(&t->lock);
    s->mono_ns = mp_clock_ns(CLOCK_MONOTONIC);
    s->wall_ns = mp_clock_ns(CLOCK_REALTIME);
    read_kv(t, MP_SLOT_MEMINFO, s->meminfo, &s->hdr[MP_SLOT_MEMINFO]);
    read_kv(t, MP_SLOT_VMSTAT, s->vmstat, &s->hdr[MP_SLOT_VMSTAT]);
    read_single(t, MP_SLOT_CG_CURRENT, &s->cg_current, &s->hdr[MP_SLOT_CG_CURRENT]);
    skip = skip && carry_full(t, s);
    if (skip) {
        s->stat_mono_ns = t->full_mono_ns;
        s->hdr[MP_SLOT_CG_STAT] = t->full_stat_hdr;
        memcpy(s->cg_stat, t->full_stat, sizeof(s->cg_stat));
        s->nprocs = t->nprocs;
        memcpy(s->procs, t->full_procs, (size_t)t->nprocs * sizeof(s->procs[0]));
    } else {
        s->stat_mono_ns = s->mono_ns;
        read_kv(t, MP_SLOT_CG_STAT, s->cg_stat, &s->hdr[MP_SLOT_CG_STAT]);
        read_procs(t, s);
    }
    read_kv(t, MP_SLOT_CG_EVENTS, s->cg_events, &s->hdr[MP_SLOT_CG_EVENTS]);
    read_single(t, MP_SLOT_CG_PEAK, &s->cg_peak, &s->hdr[MP_SLOT_CG_PEAK]);
    read_single(t, MP_SLOT_CG_MAX, &s->cg_max, &s->hdr[MP_SLOT_CG_MAX]);
    read_single(t, MP_SLOT_CG_HIGH, &s->cg_high, &s->hdr[MP_SLOT_CG_HIGH]);
    read_single(t, MP_SLOT_CG_SWAP, &s->cg_swap, &s->hdr[MP_SLOT_CG_SWAP]);
    read_single(t, MP_SLOT_CG_FAILCNT, &s->cg_failcnt, &s->hdr[MP_SLOT_CG_FAILCNT]);
    read_single(t, MP_SLOT_CG_KMEM, &s->cg_kmem, &s->hdr[MP_SLOT_CG_KMEM]);

    memset(&ph, 0, sizeof(ph));
    for (int i = 0; i < MP_PRESSURE_VALUES; i++)
        s->pressure[i] = MP_MISSING;
    if (t->fd[MP_SLOT_CG_PRESSURE] < 0) {
        ph.err = -EBADF;
    } else if ((n = read_fd(t, t->fd[MP_SLOT_CG_PRESSURE], &full)) < 0) {
        ph.err = n;
    } else if ((ph.err = mp_parse_pressure(t->buf, n, s->pressure)) != 0) {
        for (int i = 0; i < MP_PRESSURE_VALUES; i++)
            s->pressure[i] = MP_MISSING;
    }
    s->hdr[MP_SLOT_CG_PRESSURE] = ph;
    if (t->skip_max_age_ns > 0 && !skip)
        keep_full(t, s);

    if (t->nvml_on && nvml) {
        s->nvml_err = 0;
        s->ngpus = mp_nvml_read(&t->nvml, s->gpus, MP_GPUS_MAX);
        if (s->ngpus < 0) {
            s->nvml_err = s->ngpus;
            s->ngpus = 0;
        }
    } else {
        s->nvml_err = -ENODATA;         /* not read: no NVML, or a ring without MP_RING_NVML */
        s->ngpus = 0;
    }
    s->read_ns = mp_clock_ns(CLOCK_MONOTONIC) - s->mono_ns;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

int mp_sample_once(struct mp_target *t, struct mp_sample *s)
{
    return sample_into(t, s, 1, 1);
}

/* ---- sampling thread and ring ---- */

static void *sampler_main(void *arg)
{
    struct mp_target *t = arg;
    int64_t next = mp_clock_ns(CLOCK_MONOTONIC);

    for (;;) {
        struct timespec ts;
        int64_t c0, c1;

        pthread_mutex_lock(&t->ring_lock);
        while (!t->stop) {
            ts.tv_sec = next / 1000000000LL;
            ts.tv_nsec = next % 1000000000LL;
            if (pthread_cond_timedwait(&t->wake, &t->ring_lock, &ts) == ETIMEDOUT)
                break;
        }
        if (t->stop) {
            pthread_mutex_unlock(&t->ring_lock);
            break;
        }
        pthread_mutex_unlock(&t->ring_lock);

        c0 = mp_clock_ns(CLOCK_THREAD_CPUTIME_ID);
        sample_into(t, &t->scratch, t->ring_flags & MP_RING_NVML, 0);
        pthread_mutex_lock(&t->ring_lock);
        {
            int slot = (t->head + t->count) % t->cap;
            if (t->count == t->cap) {      /* full: overwrite the oldest, count it */
                t->head = (t->head + 1) % t->cap;
                t->dropped++;
            } else {
                t->count++;
            }
            memcpy(&t->ring[slot], &t->scratch, sizeof(t->scratch));
        }
        c1 = mp_clock_ns(CLOCK_THREAD_CPUTIME_ID);
        t->cpu_ns += c1 - c0;
        pthread_mutex_unlock(&t->ring_lock);

        next += t->interval_ns;
        {
            int64_t now = mp_clock_ns(CLOCK_MONOTONIC);
            if (next < now)            /* fell behind: skip missed ticks rather than burst */
                next = now;
        }
    }
    return NULL;
}

int mp_sampler_start(struct mp_target *t, int64_t interval_ns, int capacity, int flags)
{
    int rc;

    if (t->running)
        return -EBUSY;
    if (interval_ns < 100000 || capacity < 1)   /* 10 kHz is the fastest we promise */
        return -EINVAL;
    free(t->ring);
    t->ring = calloc((size_t)capacity, sizeof(struct mp_sample));
    if (!t->ring)
        return -ENOMEM;
    t->cap = capacity;
    t->head = t->count = 0;
    t->dropped = 0;
    t->cpu_ns = 0;
    t->stop = 0;
    t->interval_ns = interval_ns;
    t->ring_flags = flags;
    rc = pthread_create(&t->thr, NULL, sampler_main, t);
    if (rc) {
        free(t->ring);
        t->ring = NULL;
        return -rc;
    }
    t->running = 1;
    return 0;
}

int mp_sampler_drain(struct mp_target *t, struct mp_sample *out, int max, uint64_t *dropped)
{
    int n = 0;

    if (!t->ring)
        return -EINVAL;
    pthread_mutex_lock(&t->ring_lock);
    while (n < max && t->count > 0) {
        memcpy(&out[n++], &t->ring[t->head], sizeof(struct mp_sample));
        t->head = (t->head + 1) % t->cap;
        t->count--;
    }
    if (dropped)
        *dropped = t->dropped;
    pthread_mutex_unlock(&t->ring_lock);
    return n;
}

int mp_sampler_stop(struct mp_target *t)
{
    if (!t->running)
        return 0;
    pthread_mutex_lock(&t->ring_lock);
    t->stop = 1;
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->ring_lock);
    pthread_join(t->thr, NULL);
    t->running = 0;
    return 0;
}

int64_t mp_sampler_cpu_ns(struct mp_target *t)
{
    int64_t v;
    pthread_mutex_lock(&t->ring_lock);
    v = t->cpu_ns;
    pthread_mutex_unlock(&t->ring_lock);
    return v;
}

int mp_parse_kv_buffer(const char *buf, int len, char *keys_out, int64_t *vals_out,
                       uint8_t *kb_out, int maxkeys, struct mp_filehdr *hdr)
{
    int klen[MP_VMSTAT_KEYS];
    struct mp_kvtable tab = {.max = maxkeys, .keys = (char (*)[MP_KEYLEN])keys_out,
                             .klen = klen, .kb = kb_out};

    if (maxkeys > MP_VMSTAT_KEYS || maxkeys < 1)
        return -EINVAL;
    mp_parse_kv(buf, len, 0, &tab, vals_out, hdr);
    return tab.n;
}

/* ---- burst records: raw vectors packed into columns (layout in memprobe.h) ---- */

static void hdr_raw(const struct mp_filehdr *h, int64_t *v)
{
    v[0] = h->err;
    v[1] = h->nkeys;
    v[2] = h->bad_lines;
    v[3] = h->truncated;
}

static void kv_raw(const int64_t *vals, const struct mp_filehdr *h, int max, int64_t *v)
{
    int n = h->nkeys < 0 ? 0 : (h->nkeys > max ? max : h->nkeys);
    memcpy(v, vals, (size_t)n * sizeof(int64_t));      /* keys past nkeys stay 0 */
}

static void to_raw(const struct mp_sample *s, int64_t *v)
{
    int np = s->nprocs < 0 ? 0 : (s->nprocs > MP_PROCS_MAX ? MP_PROCS_MAX : s->nprocs);

    memset(v, 0, MP_RAW_LEN * sizeof(int64_t));
    v[MP_RAW_MONO] = s->mono_ns;
    v[MP_RAW_MONO + 1] = s->wall_ns;
    v[MP_RAW_MONO + 2] = s->read_ns;
    for (int i = 0; i < MP_NSLOTS; i++)
        hdr_raw(&s->hdr[i], v + MP_RAW_HDR + 4 * i);
    kv_raw(s->meminfo, &s->hdr[MP_SLOT_MEMINFO], MP_MEMINFO_KEYS, v + MP_RAW_MEMINFO);
    kv_raw(s->vmstat, &s->hdr[MP_SLOT_VMSTAT], MP_VMSTAT_KEYS, v + MP_RAW_VMSTAT);
    kv_raw(s->cg_stat, &s->hdr[MP_SLOT_CG_STAT], MP_CGSTAT_KEYS, v + MP_RAW_CGSTAT);
    kv_raw(s->cg_events, &s->hdr[MP_SLOT_CG_EVENTS], MP_CGEVENTS_KEYS, v + MP_RAW_CGEVENTS);
    v[MP_RAW_SINGLE + 0] = s->cg_current;
    v[MP_RAW_SINGLE + 1] = s->cg_peak;
    v[MP_RAW_SINGLE + 2] = s->cg_max;
    v[MP_RAW_SINGLE + 3] = s->cg_high;
    v[MP_RAW_SINGLE + 4] = s->cg_swap;
    v[MP_RAW_SINGLE + 5] = s->cg_failcnt;
    v[MP_RAW_SINGLE + 6] = s->cg_kmem;
    memcpy(v + MP_RAW_PRESSURE, s->pressure, sizeof(s->pressure));
    v[MP_RAW_NPROCS] = np;
    for (int i = 0; i < np; i++) {
        int64_t *p = v + MP_RAW_PROCS + MP_RAW_PROC_STRIDE * i;
        p[0] = s->procs[i].pid;
        hdr_raw(&s->procs[i].status_hdr, p + 1);
        memcpy(p + 5, s->procs[i].status, sizeof(s->procs[i].status));
    }
}

_Static_assert(MP_RAW_MEMINFO == MP_RAW_HDR + 4 * MP_NSLOTS, "raw layout");
_Static_assert(MP_RAW_VMSTAT == MP_RAW_MEMINFO + MP_MEMINFO_KEYS, "raw layout");
_Static_assert(MP_RAW_CGSTAT == MP_RAW_VMSTAT + MP_VMSTAT_KEYS, "raw layout");
_Static_assert(MP_RAW_CGEVENTS == MP_RAW_CGSTAT + MP_CGSTAT_KEYS, "raw layout");
_Static_assert(MP_RAW_SINGLE == MP_RAW_CGEVENTS + MP_CGEVENTS_KEYS, "raw layout");
_Static_assert(MP_RAW_PRESSURE == MP_RAW_SINGLE + 7, "raw layout");
_Static_assert(MP_RAW_NPROCS == MP_RAW_PRESSURE + MP_PRESSURE_VALUES, "raw layout");
_Static_assert(MP_RAW_PROC_STRIDE == 5 + MP_STATUS_KEYS, "raw layout");
_Static_assert(MP_RAW_LEN == MP_RAW_PROCS + MP_RAW_PROC_STRIDE * MP_PROCS_MAX, "raw layout");

/* little-endian whatever the host (the format is read by Python's struct '<') */
static uint8_t *put32(uint8_t *p, uint32_t x)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(x >> (8 * i));
    return p + 4;
}

static uint8_t *put64(uint8_t *p, int64_t x)
{
    uint64_t u = (uint64_t)x;
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(u >> (8 * i));
    return p + 8;
}

int64_t mp_pack_bound(int n)
{
    return 12 + (int64_t)MP_RAW_LEN * (16 + 12 * (int64_t)(n > 0 ? n : 0));
}

/* n raw vectors (row after row) -> columns; bytes written or -ENOSPC */
static int64_t pack_raw(const int64_t *m, int n, uint8_t *out, int64_t outlen)
{
    int32_t nchg[MP_RAW_LEN];
    int64_t need = 12;
    uint32_t ncols = 0;
    uint8_t *p = out;

    memset(nchg, 0, sizeof(nchg));
    for (int i = 1; i < n; i++) {
        const int64_t *a = m + (size_t)(i - 1) * MP_RAW_LEN, *b = a + MP_RAW_LEN;
        for (int c = 0; c < MP_RAW_LEN; c++)
            nchg[c] += a[c] != b[c];
    }
    for (int c = 0; c < MP_RAW_LEN; c++)
        if (nchg[c] || (n > 0 && m[c] != 0)) {
            ncols++;
            need += 16 + 12 * (int64_t)nchg[c];
        }
    if (need > outlen)
        return -ENOSPC;
    p = put32(p, MP_PACK_VERSION);
    p = put32(p, (uint32_t)n);
    p = put32(p, ncols);
    for (int c = 0; c < MP_RAW_LEN; c++) {
        uint8_t *pos, *dv;
        if (!nchg[c] && (n == 0 || m[c] == 0))
            continue;
        p = put32(p, (uint32_t)c);
        p = put32(p, (uint32_t)nchg[c]);
        p = put64(p, m[c]);
        pos = p;
        dv = p + 4 * (size_t)nchg[c];
        p = dv + 8 * (size_t)nchg[c];
        if (!nchg[c])
            continue;
        for (int i = 1; i < n; i++) {     /* column c down the rows: only columns that changed */
            int64_t a = m[(size_t)(i - 1) * MP_RAW_LEN + c], b = m[(size_t)i * MP_RAW_LEN + c];
            if (a != b) {
                pos = put32(pos, (uint32_t)i);
                dv = put64(dv, (int64_t)((uint64_t)b - (uint64_t)a));
            }
        }
    }
    return p - out;
}

int64_t mp_pack(const struct mp_sample *in, int n, uint8_t *out, int64_t outlen)
{
    int64_t *m, rc;

    if (n < 0)
        return -EINVAL;
    m = malloc(((size_t)n + 1) * MP_RAW_LEN * sizeof(int64_t));
    if (!m)
        return -ENOMEM;
    for (int i = 0; i < n; i++)
        to_raw(&in[i], m + (size_t)i * MP_RAW_LEN);
    rc = pack_raw(m, n, out, outlen);
    free(m);
    return rc;
}

/* Take up to max (at most MP_PACK_MAX) samples off the ring and pack them.  One drainer at a
 * time: the raw vectors are built outside ring_lock, so the sampler thread waits only for
 * the copies. */
int64_t mp_sampler_drain_packed(struct mp_target *t, uint8_t *out, int64_t outlen, int max,
                                int *nsamples, uint64_t *dropped)
{
    int n = 0;

    if (!t->ring)
        return -EINVAL;
    if (max > MP_PACK_MAX || max < 0)
        max = MP_PACK_MAX;
    if (outlen < mp_pack_bound(max))
        return -ENOSPC;
    if (!t->raw && !(t->raw = malloc((size_t)MP_PACK_MAX * MP_RAW_LEN * sizeof(int64_t))))
        return -ENOMEM;
    pthread_mutex_lock(&t->ring_lock);
    while (n < max && t->count > 0) {
        to_raw(&t->ring[t->head], t->raw + (size_t)n * MP_RAW_LEN);
        n++;
        t->head = (t->head + 1) % t->cap;
        t->count--;
    }
    if (dropped)
        *dropped = t->dropped;
    pthread_mutex_unlock(&t->ring_lock);
    *nsamples = n;
    return pack_raw(t->raw, n, out, outlen);
}

/* ---- flight base ticks: what changed since the kept raw vector ---- */

/* A column whose change means the sample's shape changed: headers, nprocs, pids and process headers. */
static int shape_column(int c)
{
    if (c >= MP_RAW_HDR && c < MP_RAW_MEMINFO)
        return 1;
    if (c == MP_RAW_NPROCS)
        return 1;
    return c >= MP_RAW_PROCS && (c - MP_RAW_PROCS) % MP_RAW_PROC_STRIDE < 5;
}

/* The cgroup's processes as cgroup.procs lists them now, in t->buf: its length, or -1 when the
 * directory has a child cgroup, is gone, or the text does not fit. */
static int procs_read(struct mp_target *t)
{
    struct stat st;
    ssize_t n;
    int fd;

    if (fstat(t->procs_dirfd, &st) < 0 || st.st_nlink != 2)
        return -1;
    fd = t->procs_fd;
    if (fd < 0) {
        fd = openat(t->procs_dirfd, "cgroup.procs", O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
            return -1;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return -1;
        }
    }
    n = pread_intr(fd, t->buf, MP_PROCS_TEXT_MAX, 0);
    if (t->procs_keep && n >= 0) {
        t->procs_fd = fd;
    } else {
        close(fd);                        /* v1 (a kept one reads a cached list), or a failed read */
        t->procs_fd = -1;
    }
    return n < 0 || n >= MP_PROCS_TEXT_MAX ? -1 : (int)n;
}

int mp_procs_watch(struct mp_target *t, const char *cgroup_dir, int keep_open)
{
    int fd = open(cgroup_dir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    if (!t->procs_text && !(t->procs_text = malloc(MP_PROCS_TEXT_MAX))) {
        close(fd);
        return -ENOMEM;
    }
    if (t->procs_dirfd >= 0)
        close(t->procs_dirfd);
    if (t->procs_fd >= 0)
        close(t->procs_fd);
    t->procs_dirfd = fd;
    t->procs_fd = -1;
    t->procs_keep = keep_open;
    t->procs_len = -1;
    return 0;
}

int mp_procs_mark(struct mp_target *t)
{
    if (t->procs_dirfd < 0)
        return -EBADF;
    pthread_mutex_lock(&t->lock);
    t->procs_len = procs_read(t);
    if (t->procs_len >= 0)
        memcpy(t->procs_text, t->buf, (size_t)t->procs_len);
    pthread_mutex_unlock(&t->lock);
    return t->procs_len < 0 ? -ENOENT : 0;
}

void mp_delta_base(struct mp_target *t, const struct mp_sample *s)
{
    t->delta_valid = 0;
    if (!t->delta && !(t->delta = malloc(3 * (size_t)MP_RAW_LEN * sizeof(int64_t))))
        return;
    if (s->stat_mono_ns != s->mono_ns)
        return;                           /* carried: the next tick reads whole */
    if (t->procs_dirfd >= 0 && t->procs_len < 0)
        return;                           /* watched, not marked: no list to compare with */
    to_raw(s, t->delta);
    memcpy(t->delta + 2 * MP_RAW_LEN, t->delta, MP_RAW_LEN * sizeof(int64_t));
    t->delta_valid = 1;
}

int mp_sample_delta(struct mp_target *t, struct mp_sample *out, int32_t *cols, int64_t *vals, int max)
{
    int64_t *old, *cur;
    int n = 0;

    if (t->delta_valid && t->procs_dirfd >= 0) {
        pthread_mutex_lock(&t->lock);     /* t->buf, which sample_into reads over next */
        int len = procs_read(t);
        if (len < 0 || len != t->procs_len || memcmp(t->buf, t->procs_text, (size_t)len) != 0)
            t->delta_valid = 0;
        pthread_mutex_unlock(&t->lock);
    }
    sample_into(t, out, 1, 1);
    if (!t->delta_valid || out->stat_mono_ns != out->mono_ns)
        return t->delta_valid = 0, MP_DELTA_WHOLE;
    old = t->delta;
    cur = t->delta + MP_RAW_LEN;
    to_raw(out, cur);
    for (int c = 0; c < MP_RAW_LEN; c++) {
        if (old[c] == cur[c])
            continue;
        if (shape_column(c) || old[c] == MP_MISSING || cur[c] == MP_MISSING || n == max)
            return t->delta_valid = 0, MP_DELTA_WHOLE;
        cols[n] = c;
        vals[n++] = cur[c];
    }
    memcpy(old, cur, MP_RAW_LEN * sizeof(int64_t));
    return n;
}

int mp_delta_row(struct mp_target *t, struct mp_sample *out, int32_t *cols, int64_t *vals,
                 const struct mp_rowmap *m, const int32_t *x_ids, const int64_t *x_vals,
                 const uint8_t *x_on, int nx, int deflate, int *nchanged, int64_t *scal,
                 int32_t *since_cols, int64_t *since_vals, int *nsince, uint8_t *blob, int cap)
{
    static __thread char text[64 << 10];
    const int64_t *kept, *base;
    int n = mp_sample_delta(t, out, cols, vals, MP_RAW_LEN), len, ns = 0;

    if (n < 0)
        return n;
    *nchanged = n;
    len = mp_row_text(m, cols, vals, n, x_ids, x_vals, x_on, nx, text, sizeof(text));
    if (len < 0) {
        t->delta_valid = 0;               /* what changed is not written: the next tick starts whole */
        return len == -1 ? MP_DELTA_WHOLE : len;
    }
    kept = t->delta;
    base = t->delta + 2 * MP_RAW_LEN;
    for (int i = 0; i < MP_ROW_SCALARS; i++)
        scal[i] = m->scal_cols[i] >= 0 && m->scal_cols[i] < MP_RAW_LEN ? kept[m->scal_cols[i]] : MP_MISSING;
    for (int c = 0; c < MP_RAW_LEN; c++)
        if (kept[c] != base[c]) {
            since_cols[ns] = c;
            since_vals[ns++] = kept[c];
        }
    *nsince = ns;
    if (!deflate) {
        if (len > cap)
            return t->delta_valid = 0, -ENOSPC;
        memcpy(blob, text, (size_t)len);
        return len;
    }
    len = mp_row_deflate(text, len, blob, cap);
    if (len < 0)
        t->delta_valid = 0;
    return len;
}

int64_t mp_pread_many(const int *fds, const int32_t *caps, int n, char *buf, int64_t buflen, int32_t *lens)
{
    int64_t at = 0;

    for (int i = 0; i < n; i++) {
        ssize_t r;
        if (caps[i] < 0 || at + caps[i] > buflen) {
            lens[i] = -ENOSPC;
            continue;
        }
        r = pread_intr(fds[i], buf + at, (size_t)caps[i], 0);
        lens[i] = r < 0 ? -errno : (int32_t)r;
        if (r > 0)
            at += r;
    }
    return at;
}
