/* Internal: the key tables and parsers behind the sampler (see parse.c for the grammar). */
#ifndef MEMPROBE_PARSE_H
#define MEMPROBE_PARSE_H
#include "memprobe.h"

/* Keys of one kv file in the order first seen.  Indices never change once given,
 * so a sample's value array can be read with the key names fetched once. */
struct mp_kvtable {
    int n;                     /* keys known; written with release order after the key */
    int max;                   /* capacity of the value array this table feeds */
    int closed;                /* 1: only the preset keys are wanted (status) */
    int hint;                  /* where the next line's key is expected */
    char (*keys)[MP_KEYLEN];
    int *klen;
    uint8_t *kb;
};

void mp_parse_kv(const char *buf, int len, int full, struct mp_kvtable *t, int64_t *vals,
                 struct mp_filehdr *hdr);
#endif
