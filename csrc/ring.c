/* The flight recorder's 100 ms ring in a thread (csrc/memprobe.h mp_ring_start; feed/flight.py).
 *
 * Between its base ticks the flight recorder only needs the text of /proc/meminfo and of each
 * target's usage counter every 100 ms, kept for a minute.  Waking Python ten times a second for
 * that cost about as much as the reads themselves (docs/performance.md, Issue 22): this thread
 * does the reads, keeps the entries and says when MemAvailable falls below a limit, so Python
 * wakes once a base period, or on a trigger. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memprobe.h"

struct ring_entry {
    uint64_t seq;
    int64_t mono_ns, wall_ns, used;
    char *text;                 /* `used` bytes; grown, never shrunk */
    int64_t text_cap;
    int32_t *lens;              /* n of them */
};

struct mp_ring {
    int n, slots;
    int *fds;                   /* our own duplicates, closed by mp_ring_stop */
    int32_t *caps;
    int64_t buflen, interval_ns, avail_below, avail;
    int low, notify_fd, stop;
    char *scratch;
    int32_t *scratch_lens;
    struct ring_entry *e;
    uint64_t seq;               /* of the newest entry; entry seq s is in slot s % slots */
    pthread_t thr;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

/* MemAvailable of a /proc/meminfo text in bytes, or -1 (fs/proc/meminfo.c prints it in kB). */
static int64_t mem_available(const char *text, int64_t len)
{
    static const char key[] = "\nMemAvailable:";
    const char *p = memmem(text, (size_t)len, key, sizeof(key) - 1), *end = text + len;
    int64_t v = 0;
    int digits = 0;

    if (!p)
        return -1;
    for (p += sizeof(key) - 1; p < end && *p == ' '; p++)
        ;
    for (; p < end && *p >= '0' && *p <= '9' && digits < 18; p++, digits++)
        v = v * 10 + (*p - '0');
    return digits ? v * 1024 : -1;
}

static void ring_read(struct mp_ring *r)
{
    int64_t mono = mp_clock_ns(CLOCK_MONOTONIC), wall = mp_clock_ns(CLOCK_REALTIME);
    int64_t used = mp_pread_many(r->fds, r->caps, r->n, r->scratch, r->buflen, r->scratch_lens);
    struct ring_entry *e;
    int64_t avail = r->avail_below > 0 && r->scratch_lens[0] > 0 ? mem_available(r->scratch, r->scratch_lens[0]) : -1;
    int fell = 0;

    pthread_mutex_lock(&r->lock);          /* the slot of the oldest entry, which a copy may be reading */
    e = &r->e[(r->seq + 1) % (uint64_t)r->slots];
    if (used > e->text_cap) {
        char *t = realloc(e->text, (size_t)used);
        if (!t) {
            pthread_mutex_unlock(&r->lock);
            return;                 /* no memory: this entry is skipped */
        }
        e->text = t;
        e->text_cap = used;
    }
    if (used)
        memcpy(e->text, r->scratch, (size_t)used);
    memcpy(e->lens, r->scratch_lens, sizeof(int32_t) * (size_t)r->n);
    e->used = used;
    e->mono_ns = mono;
    e->wall_ns = wall;
    if (avail >= 0) {
        fell = avail < r->avail_below && !r->low;
        r->low = avail < r->avail_below;
        r->avail = avail;
    }
    e->seq = ++r->seq;
    pthread_mutex_unlock(&r->lock);
    if (fell) {
        uint64_t one = 1;
        if (write(r->notify_fd, &one, sizeof(one)) < 0) {
            /* an eventfd at its limit has a wake-up pending already */
        }
    }
}

static void *ring_main(void *arg)
{
    struct mp_ring *r = arg;
    int64_t next = mp_clock_ns(CLOCK_MONOTONIC) + r->interval_ns;

    for (;;) {
        struct timespec ts = {next / 1000000000LL, next % 1000000000LL};
        pthread_mutex_lock(&r->lock);
        while (!r->stop && pthread_cond_timedwait(&r->wake, &r->lock, &ts) != ETIMEDOUT)
            ;
        if (r->stop) {
            pthread_mutex_unlock(&r->lock);
            return NULL;
        }
        pthread_mutex_unlock(&r->lock);
        ring_read(r);
        next += r->interval_ns;
        if (next < mp_clock_ns(CLOCK_MONOTONIC))   /* fell behind: on from now, no burst */
            next = mp_clock_ns(CLOCK_MONOTONIC) + r->interval_ns;
    }
}

static void ring_free(struct mp_ring *r)
{
    if (r->notify_fd >= 0)
        close(r->notify_fd);
    for (int i = 0; i < r->n && r->fds; i++)
        if (r->fds[i] >= 0)
            close(r->fds[i]);
    for (int i = 0; i < r->slots && r->e; i++) {
        free(r->e[i].text);
        free(r->e[i].lens);
    }
    free(r->e);
    free(r->fds);
    free(r->caps);
    free(r->scratch);
    free(r->scratch_lens);
    free(r);
}

struct mp_ring *mp_ring_start(const int *fds, const int32_t *caps, int n, int64_t interval_ns, int slots,
                              int64_t avail_below_bytes, int low, int notify_fd, int *err)
{
    struct mp_ring *r;
    pthread_condattr_t ca;
    int rc;

    *err = -EINVAL;
    if (n < 1 || slots < 1 || interval_ns < 1000000 || (avail_below_bytes > 0 && notify_fd < 0))
        return NULL;
    *err = -ENOMEM;
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->n = n;
    r->slots = slots;
    r->interval_ns = interval_ns;
    r->avail_below = avail_below_bytes;
    r->avail = -1;
    r->low = low;
    r->notify_fd = -1;
    r->fds = malloc(sizeof(int) * (size_t)n);
    r->caps = malloc(sizeof(int32_t) * (size_t)n);
    r->scratch_lens = malloc(sizeof(int32_t) * (size_t)n);
    r->e = calloc((size_t)slots, sizeof(struct ring_entry));
    if (!r->fds || !r->caps || !r->scratch_lens || !r->e)
        goto fail;
    for (int i = 0; i < n; i++)
        r->fds[i] = -1;
    for (int i = 0; i < n; i++) {
        if (caps[i] < 0)
            goto fail;
        r->caps[i] = caps[i];
        r->buflen += caps[i];
        /* our own descriptors: the caller may close its own (a target dropped) while we read */
        r->fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
        if (r->fds[i] < 0) {
            *err = -errno;
            goto fail;
        }
    }
    if (avail_below_bytes > 0) {
        r->notify_fd = fcntl(notify_fd, F_DUPFD_CLOEXEC, 3);
        if (r->notify_fd < 0) {
            *err = -errno;
            goto fail;
        }
    }
    r->scratch = malloc((size_t)r->buflen + 1);
    if (!r->scratch)
        goto fail;
    for (int i = 0; i < slots; i++) {
        r->e[i].lens = calloc((size_t)n, sizeof(int32_t));
        if (!r->e[i].lens)
            goto fail;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wake, &ca);
    pthread_condattr_destroy(&ca);
    rc = pthread_create(&r->thr, NULL, ring_main, r);
    if (rc) {
        pthread_mutex_destroy(&r->lock);
        pthread_cond_destroy(&r->wake);
        *err = -rc;
        goto fail;
    }
    *err = 0;
    return r;
fail:
    ring_free(r);
    return NULL;
}

int mp_ring_copy(struct mp_ring *r, uint64_t after, int max, uint64_t *seq, int64_t *mono, int64_t *wall,
                 int64_t *used, char *buf, int64_t buflen, int32_t *lens)
{
    int got = 0, cut = 0;
    int64_t at = 0;
    uint64_t first;

    pthread_mutex_lock(&r->lock);
    first = r->seq > (uint64_t)r->slots ? r->seq - (uint64_t)r->slots + 1 : 1;
    if (after == MP_RING_NEWEST)
        first = r->seq ? r->seq : 1;
    else if (after + 1 > first)
        first = after + 1;
    for (uint64_t s = first; s <= r->seq && got < max; s++) {
        struct ring_entry *e = &r->e[s % (uint64_t)r->slots];
        if (at + e->used > buflen) {
            cut = 1;
            break;
        }
        if (e->used)
            memcpy(buf + at, e->text, (size_t)e->used);
        memcpy(lens + (size_t)got * (size_t)r->n, e->lens, sizeof(int32_t) * (size_t)r->n);
        at += e->used;
        seq[got] = e->seq;
        mono[got] = e->mono_ns;
        wall[got] = e->wall_ns;
        used[got] = e->used;
        got++;
    }
    pthread_mutex_unlock(&r->lock);
    return got == 0 && cut ? -ENOSPC : got;
}

int64_t mp_ring_avail(struct mp_ring *r, int *low)
{
    int64_t v;
    pthread_mutex_lock(&r->lock);
    v = r->avail;
    *low = r->low;
    pthread_mutex_unlock(&r->lock);
    return v;
}

void mp_ring_stop(struct mp_ring *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
    pthread_join(r->thr, NULL);
    pthread_mutex_destroy(&r->lock);
    pthread_cond_destroy(&r->wake);
    ring_free(r);
}
