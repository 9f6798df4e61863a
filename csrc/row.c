/* Flight base rows encoded in C (csrc/memprobe.h mp_delta_row; feed/flat_delta.py): the JSON
 * text recording.py writes for a sample's changed paths, [[path id,value],...], and its zlib
 * stream (any inflater reads it). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "memprobe.h"

_Static_assert(MP_ROW_ITEMS_MAX == 2 * MP_RAW_LEN, "ids[]: a column has at most two paths");

/* One item: [id,value]; value as burst_value (recording.py) gives it, MP_MISSING as null. */
static int item(char *out, int cap, int32_t id, int64_t v, int kind, int64_t floor)
{
    if (v == MP_MISSING)
        return snprintf(out, (size_t)cap, "[%" PRId32 ",null]", id);
    if (kind == MP_ROW_LIMIT && (v == MP_UNLIMITED || (floor > 0 && v >= floor)))
        return snprintf(out, (size_t)cap, "[%" PRId32 ",\"max\"]", id);
    if (kind == MP_ROW_HUNDREDTHS) {          /* v / 100: the same double as Python's, read back */
        uint64_t a = v < 0 ? -(uint64_t)v : (uint64_t)v;
        return snprintf(out, (size_t)cap, "[%" PRId32 ",%s%" PRIu64 ".%02" PRIu64 "]", id, v < 0 ? "-" : "",
                        a / 100, a % 100);
    }
    return snprintf(out, (size_t)cap, "[%" PRId32 ",%" PRId64 "]", id, v);
}

int mp_row_text(const struct mp_rowmap *m, const int32_t *cols, const int64_t *vals, int n,
                const int32_t *x_ids, const int64_t *x_vals, const uint8_t *x_on, int nx, char *out, int cap)
{
    int at = 0, k;

    if (cap < 2)
        return -ENOSPC;
    out[at++] = '[';
    for (int i = 0; i < n; i++) {
        int c = cols[i];
        if (c < 0 || c >= MP_RAW_LEN || m->start[c] >= m->start[c + 1])
            return -1;
        for (int j = m->start[c]; j < m->start[c + 1]; j++) {
            k = item(out + at, cap - at, m->ids[j], vals[i], m->kinds[j], m->limit_floor);
            if (k < 0 || k + 1 >= cap - at)
                return -ENOSPC;
            at += k;
            out[at++] = ',';
        }
    }
    for (int i = 0; i < nx; i++) {
        if (!x_on[i] || x_ids[i] < 0)
            continue;
        k = item(out + at, cap - at, x_ids[i], x_vals[i], MP_ROW_INT, 0);
        if (k < 0 || k + 1 >= cap - at)
            return -ENOSPC;
        at += k;
        out[at++] = ',';
    }
    if (out[at - 1] == ',')
        at--;
    out[at++] = ']';
    return at;
}

int mp_row_deflate(const char *text, int len, uint8_t *blob, int cap)
{
    /* One stream per thread, reset per row: setting one up is most of a small row's cost.  A
     * row is digits and ids that rarely repeat: Huffman codes alone measured 5.3 us against 9.4 us
     * for recording.py's level 6 (a 763-byte row, 4 KiB window), 386 bytes against 378. */
    static __thread z_stream zs;
    static __thread int ready;
    int r;

    if (!ready) {
        memset(&zs, 0, sizeof(zs));
        if (deflateInit2(&zs, 1, Z_DEFLATED, 12, 4, Z_HUFFMAN_ONLY) != Z_OK)
            return -ENOMEM;
        ready = 1;
    } else if (deflateReset(&zs) != Z_OK) {
        return -EIO;
    }
    zs.next_in = (Bytef *)text;
    zs.avail_in = (uInt)len;
    zs.next_out = blob;
    zs.avail_out = (uInt)cap;
    r = deflate(&zs, Z_FINISH);
    if (r != Z_STREAM_END)
        return -ENOSPC;
    return (int)(cap - zs.avail_out);
}
