/* NVML readings for the sampler loop, loaded with dlopen("libnvidia-ml.so.1").
 * Struct layouts and version words follow nvml.h of the R580 driver (nvmlMemory_v2_t,
 * nvmlProcessInfo_t as used by the _v3 process calls). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include "nvml.h"

#define NVML_SUCCESS 0
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_VALUE_NOT_AVAILABLE 0xffffffffffffffffULL   /* usedGpuMemory under WDDM/MIG (nvml.h) */

struct nvml_memory_v1 { unsigned long long total, free, used; };
struct nvml_memory_v2 { unsigned int version; unsigned long long total, reserved, free, used; };
struct nvml_process_info { unsigned int pid; unsigned long long used; unsigned int gi, ci; };

/* NVML_STRUCT_VERSION(Memory, 2) = sizeof(nvmlMemory_v2_t) | (2 << 24) (nvml.h) */
#define NVML_MEMORY_V2 ((unsigned int)(sizeof(struct nvml_memory_v2) | (2u << 24)))

int mp_nvml_open(struct mp_nvml *n)
{
    int (*init)(void);
    int (*count)(unsigned int *);
    int (*handle)(unsigned int, void **);
    unsigned int cnt = 0;
    static const char *proc_fns[3] = {
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
        "nvmlDeviceGetMPSComputeRunningProcesses_v3",
    };

    memset(n, 0, sizeof(*n));
    n->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!n->lib)
        return -ENOENT;
    init = (int (*)(void))dlsym(n->lib, "nvmlInit_v2");
    count = (int (*)(unsigned int *))dlsym(n->lib, "nvmlDeviceGetCount_v2");
    handle = (int (*)(unsigned int, void **))dlsym(n->lib, "nvmlDeviceGetHandleByIndex_v2");
    n->shutdown = (int (*)(void))dlsym(n->lib, "nvmlShutdown");
    n->mem_v2 = (int (*)(void *, void *))dlsym(n->lib, "nvmlDeviceGetMemoryInfo_v2");
    n->mem_v1 = (int (*)(void *, void *))dlsym(n->lib, "nvmlDeviceGetMemoryInfo");
    for (int i = 0; i < 3; i++)
        n->procs[i] = (int (*)(void *, unsigned int *, void *))dlsym(n->lib, proc_fns[i]);
    if (!init || !count || !handle || init() != NVML_SUCCESS) {
        dlclose(n->lib);
        n->lib = NULL;
        return -EIO;
    }
    if (count(&cnt) != NVML_SUCCESS)
        cnt = 0;
    for (unsigned int i = 0; i < cnt && n->ndev < MP_GPUS_MAX; i++)
        if (handle(i, &n->dev[n->ndev]) == NVML_SUCCESS)
            n->ndev++;
    return 0;
}

static void read_procs(struct mp_nvml *n, void *dev, struct mp_gpu *g)
{
    struct nvml_process_info info[MP_GPU_PROCS_MAX];

    g->nprocs = 0;
    g->procs_err = 0;
    g->procs_truncated = 0;
    for (int kind = 0; kind < 3; kind++) {
        unsigned int cnt = MP_GPU_PROCS_MAX;
        int rc;
        if (!n->procs[kind])
            continue;
        rc = n->procs[kind](dev, &cnt, info);
        if (rc == NVML_ERROR_INSUFFICIENT_SIZE) {
            g->procs_truncated = 1;
            cnt = MP_GPU_PROCS_MAX;
        } else if (rc != NVML_SUCCESS) {
            if (kind == 0)
                g->procs_err = rc;
            continue;
        }
        for (unsigned int i = 0; i < cnt && g->nprocs < MP_GPU_PROCS_MAX; i++) {
            struct mp_gpu_proc *p = &g->procs[g->nprocs++];
            p->pid = info[i].pid;
            p->kind = kind;
            p->used_bytes = info[i].used == NVML_VALUE_NOT_AVAILABLE ? MP_MISSING : (int64_t)info[i].used;
        }
    }
}

int mp_nvml_read(struct mp_nvml *n, struct mp_gpu *out, int max)
{
    int i;

    if (!n->lib)
        return -ENODEV;
    for (i = 0; i < n->ndev && i < max; i++) {
        struct mp_gpu *g = &out[i];
        struct nvml_memory_v2 m2;
        struct nvml_memory_v1 m1;
        int rc = -1;

        g->total_bytes = g->free_bytes = g->used_bytes = g->reserved_bytes = MP_MISSING;
        if (n->mem_v2) {
            memset(&m2, 0, sizeof(m2));
            m2.version = NVML_MEMORY_V2;
            rc = n->mem_v2(n->dev[i], &m2);
            if (rc == NVML_SUCCESS) {
                g->total_bytes = (int64_t)m2.total;
                g->free_bytes = (int64_t)m2.free;
                g->used_bytes = (int64_t)m2.used;
                g->reserved_bytes = (int64_t)m2.reserved;
            }
        }
        if (rc != NVML_SUCCESS && n->mem_v1) {
            rc = n->mem_v1(n->dev[i], &m1);
            if (rc == NVML_SUCCESS) {
                g->total_bytes = (int64_t)m1.total;
                g->free_bytes = (int64_t)m1.free;
                g->used_bytes = (int64_t)m1.used;
            }
        }
        g->mem_err = rc;   /* 3 (NOT_SUPPORTED) on integrated GB10 */
        read_procs(n, n->dev[i], g);
    }
    return i;
}

void mp_nvml_close(struct mp_nvml *n)
{
    if (n->lib) {
        if (n->shutdown)
            n->shutdown();
        dlclose(n->lib);
    }
    memset(n, 0, sizeof(*n));
}
