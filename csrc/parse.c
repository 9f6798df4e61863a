/* Parsers for the text formats of /proc and cgroupfs memory files.
 *
 * The kv grammar, one line (shared with spark_memprobe/sources/parse.py, keep them equal):
 *     KEY [':'] WS+ ['-'] DIGITS{1,19} [WS+ 'kB'] WS* '\n'
 * KEY is 1..MP_KEYLEN-1 bytes of 0x21..0x7e except ':'; WS is ' ' or '\t'.
 * A value with kB is multiplied by 1024.  Values must lie in (MP_MISSING, INT64_MAX].
 * Empty lines are skipped; other lines that do not match count as bad_lines.
 * A last line without '\n' is dropped and the file is marked truncated.
 */
#include <errno.h>
#include <string.h>
#include "parse.h"

static int is_ws(char c) { return c == ' ' || c == '\t'; }
static int is_keych(unsigned char c) { return c >= 0x21 && c <= 0x7e && c != ':'; }

/* Parse the value part of a line (after the key and optional ':').
 * Returns 0 and sets *val / *kb, or -1 when the line does not match. */
static int parse_value(const char *p, const char *end, int64_t *val, int *kb)
{
    int neg = 0, ndig = 0;
    uint64_t acc = 0;

    if (p >= end || !is_ws(*p))
        return -1;
    while (p < end && is_ws(*p))
        p++;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    while (p < end && *p >= '0' && *p <= '9') {
        if (++ndig > 19)
            return -1;
        acc = acc * 10 + (uint64_t)(*p - '0');
        p++;
    }
    if (ndig == 0 || acc > (uint64_t)INT64_MAX)
        return -1;
    *kb = 0;
    if (p < end && is_ws(*p)) {
        while (p < end && is_ws(*p))
            p++;
        if (end - p >= 2 && p[0] == 'k' && p[1] == 'B') {
            *kb = 1;
            p += 2;
            while (p < end && is_ws(*p))
                p++;
        }
    }
    if (p != end)
        return -1;
    if (*kb) {
        if (acc > (uint64_t)INT64_MAX / 1024)
            return -1;
        acc *= 1024;
    }
    if (neg) {
        if (acc > (uint64_t)INT64_MAX - 1)   /* -(2^63-1) is MP_MISSING */
            return -1;
        *val = -(int64_t)acc;
    } else {
        *val = (int64_t)acc;
    }
    return 0;
}

static int find_key(struct mp_kvtable *t, const char *k, int klen)
{
    int h = t->hint;

    if (h < t->n && t->klen[h] == klen && memcmp(t->keys[h], k, (size_t)klen) == 0)
        return h;
    for (int i = 0; i < t->n; i++)
        if (t->klen[i] == klen && memcmp(t->keys[i], k, (size_t)klen) == 0)
            return i;
    return -1;
}

void mp_parse_kv(const char *buf, int len, int full, struct mp_kvtable *t, int64_t *vals,
                 struct mp_filehdr *hdr)
{
    const char *p = buf, *end = buf + len;
    int good = 0;
    uint64_t first[4] = {0, 0, 0, 0};   /* closed table: the first bytes of its keys */

    hdr->bad_lines = 0;
    hdr->truncated = full;
    for (int i = 0; i < t->max; i++)
        vals[i] = MP_MISSING;
    t->hint = 0;
    for (int i = 0; t->closed && i < t->n; i++)
        first[(unsigned char)t->keys[i][0] >> 6] |= 1ULL << ((unsigned char)t->keys[i][0] & 63);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *q = p, *lend;
        int klen, idx, kb;
        int64_t v;

        if (!nl) {             /* no newline: the kernel always ends a line, so this was cut */
            hdr->truncated = 1;
            break;
        }
        lend = nl;
        if (lend == p) {       /* empty line */
            p = nl + 1;
            continue;
        }
        /* a closed table skips the lines it did not ask for (8 of a status file's ~55) on their first byte */
        if (t->closed && !(first[(unsigned char)*p >> 6] & (1ULL << ((unsigned char)*p & 63)))) {
            p = nl + 1;
            continue;
        }
        idx = t->hint;
        klen = idx < t->n ? t->klen[idx] : 0;
        if (klen > 0 && lend - p > klen && memcmp(p, t->keys[idx], (size_t)klen) == 0 &&
            (p[klen] == ':' || is_ws(p[klen]))) {
            q = p + klen;      /* the key expected here (files keep their order): no scan of it */
        } else {
            while (q < lend && is_keych((unsigned char)*q))
                q++;
            klen = (int)(q - p);
            idx = (klen > 0 && klen < MP_KEYLEN) ? find_key(t, p, klen) : -1;
        }
        if (t->closed && idx < 0) {   /* a line we did not ask for */
            p = nl + 1;
            continue;
        }
        if (klen == 0 || klen >= MP_KEYLEN || (q < lend && *q != ':' && !is_ws(*q))) {
            hdr->bad_lines++;
            p = nl + 1;
            continue;
        }
        if (q < lend && *q == ':')
            q++;
        if (parse_value(q, lend, &v, &kb) < 0) {
            hdr->bad_lines++;
            p = nl + 1;
            continue;
        }
        if (idx < 0) {
            if (t->n >= t->max) {
                hdr->bad_lines++;
                p = nl + 1;
                continue;
            }
            idx = t->n;
            memcpy(t->keys[idx], p, (size_t)klen);
            t->keys[idx][klen] = '\0';
            t->klen[idx] = klen;
            __atomic_store_n(&t->n, idx + 1, __ATOMIC_RELEASE);
        }
        t->kb[idx] = (uint8_t)kb;
        vals[idx] = v;
        t->hint = idx + 1;
        good++;
        p = nl + 1;
    }
    hdr->nkeys = t->n;
    hdr->err = (good == 0 && !t->closed) ? -EBADMSG : 0;
}

/* One number, or "max", then '\n'.  Numbers follow the kv grammar's range rules. */
int mp_parse_single(const char *buf, int len, int64_t *val)
{
    const char *p = buf, *end = buf + len - 1;
    int neg = 0, ndig = 0;
    uint64_t acc = 0;

    if (len == 0 || buf[len - 1] != '\n')
        return -EBADMSG;
    if (end - buf == 3 && memcmp(buf, "max", 3) == 0) {
        *val = MP_UNLIMITED;
        return 0;
    }
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    while (p < end && *p >= '0' && *p <= '9') {
        if (++ndig > 19)
            return -EBADMSG;
        acc = acc * 10 + (uint64_t)(*p - '0');
        p++;
    }
    if (ndig == 0 || p != end || acc > (uint64_t)INT64_MAX - 1)
        return -EBADMSG;
    *val = neg ? -(int64_t)acc : (int64_t)acc;
    return 0;
}

/* "some avg10=0.12 avg60=0.00 avg300=0.00 total=1234\nfull ...\n"
 * avg values become hundredths of a percent; total is microseconds. */
static int parse_psi_line(const char *p, const char *end, int64_t out[4])
{
    static const char *names[4] = {"avg10=", "avg60=", "avg300=", "total="};
    for (int i = 0; i < 4; i++) {
        size_t nl = strlen(names[i]);
        uint64_t acc = 0;
        int ndig = 0;
        if (p >= end || *p != ' ')
            return -1;
        p++;
        if ((size_t)(end - p) < nl || memcmp(p, names[i], nl) != 0)
            return -1;
        p += nl;
        while (p < end && *p >= '0' && *p <= '9') {
            if (++ndig > 18)
                return -1;
            acc = acc * 10 + (uint64_t)(*p - '0');
            p++;
        }
        if (ndig == 0)
            return -1;
        if (i < 3) {   /* exactly two decimals, as the kernel prints them (kernel/sched/psi.c) */
            if (end - p < 3 || p[0] != '.' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9')
                return -1;
            acc = acc * 100 + (uint64_t)(p[1] - '0') * 10 + (uint64_t)(p[2] - '0');
            p += 3;
        }
        out[i] = (int64_t)acc;
    }
    return p == end ? 0 : -1;
}

int mp_parse_pressure(const char *buf, int len, int64_t *out)
{
    const char *p = buf, *end = buf + len;
    int good = 0;

    for (int i = 0; i < 8; i++)
        out[i] = MP_MISSING;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        int64_t v[4];
        int base;
        if (!nl)
            break;
        if (nl - p >= 4 && memcmp(p, "some", 4) == 0)
            base = 0;
        else if (nl - p >= 4 && memcmp(p, "full", 4) == 0)
            base = 4;
        else
            return -EBADMSG;
        if (parse_psi_line(p + 4, nl, v) < 0)
            return -EBADMSG;
        memcpy(out + base, v, sizeof(v));
        good++;
        p = nl + 1;
    }
    return good ? 0 : -EBADMSG;
}
