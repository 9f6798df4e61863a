/* Internal: NVML through dlopen, so the extension has no link-time dependency on the driver. */
#ifndef MEMPROBE_NVML_H
#define MEMPROBE_NVML_H
#include "memprobe.h"

struct mp_nvml {
    void *lib;
    int ndev;
    void *dev[MP_GPUS_MAX];
    int (*mem_v2)(void *, void *);
    int (*mem_v1)(void *, void *);
    int (*procs[3])(void *, unsigned int *, void *);   /* compute, graphics, MPS compute */
    int (*shutdown)(void);
};

int mp_nvml_open(struct mp_nvml *n);        /* 0, or -ENOENT (no library) / -EIO (init failed) */
int mp_nvml_read(struct mp_nvml *n, struct mp_gpu *out, int max);   /* devices read, or -errno */
void mp_nvml_close(struct mp_nvml *n);
#endif
