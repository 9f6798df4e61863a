/*
 * TEST STAND-IN for NVIDIA's libcuda.so.1 -- NOT the CUDA driver, no GPU involved.
 *
 * CI has no GPU, so the eBPF CUDA probes (spark_memprobe/bpf/cuda.c) are tested against this
 * library: it is built as libcuda.so.1 (soname included, so /proc/<pid>/maps shows that name)
 * and exports the CUDA driver API allocation entry points with their real signatures
 * (cuda.h) and CUresult codes. "Device" memory is ordinary host memory here; what matters is
 * that each call returns through the same ABI: a CUresult in the return register and the
 * pointer or handle written through the out-pointer argument.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;                       /* enum cudaError_enum */
typedef unsigned long long CUdeviceptr;     /* CUdeviceptr_v2 on 64-bit hosts */
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUstream_st *CUstream;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct { int type; int requestedHandleTypes; struct { int type; int id; } location;
                 void *win32HandleMetaData; unsigned char allocFlags[8]; } CUmemAllocationProp;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2

/* marker so nobody mistakes this file for the real driver */
const char memprobe_fakecuda_standin[] = "spark_memprobe test stand-in for libcuda.so.1 (no GPU)";

#define MAX_ALLOCS 4096
static struct { uintptr_t p; size_t size; } live[MAX_ALLOCS];
static unsigned long long next_handle = 0x1000;
static const size_t too_big = (size_t)1 << 46;   /* anything this large is "out of memory" */

static CUresult track(void **out, size_t size)
{
    if (out == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (size >= too_big)
        return CUDA_ERROR_OUT_OF_MEMORY;
    void *p = malloc(size);
    if (p == NULL)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < MAX_ALLOCS; i++) {
        if (live[i].p == 0) {
            live[i].p = (uintptr_t)p;
            live[i].size = size;
            *out = p;
            return CUDA_SUCCESS;
        }
    }
    free(p);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult untrack(uintptr_t p)
{
    for (int i = 0; i < MAX_ALLOCS; i++) {
        if (live[i].p == p && p != 0) {
            free((void *)p);
            live[i].p = 0;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_VALUE;
}

/* noinline + visibility: each entry point is a real exported function, never inlined into another */
#define API __attribute__((visibility("default"), noinline))

API CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }

API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    void *p = NULL;
    CUresult r = track(&p, bytesize);
    if (r == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)(uintptr_t)p;
    return r;
}

/* cuMemAllocManaged and the stream-ordered allocators call cuMemAlloc_v2 through the PLT, as
 * a driver built on its own entry points might: the probes must count only the outer call. */
API CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags)
{
    (void)flags;
    return cuMemAlloc_v2(dptr, bytesize);
}

API CUresult cuMemAllocHost_v2(void **pp, size_t bytesize) { return track(pp, bytesize); }

API CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
{
    (void)Flags;
    return track(pp, bytesize);
}

API CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                                unsigned int ElementSizeBytes)
{
    if (pPitch == NULL || (ElementSizeBytes != 4 && ElementSizeBytes != 8 && ElementSizeBytes != 16))
        return CUDA_ERROR_INVALID_VALUE;
    size_t pitch = (WidthInBytes + 511) & ~(size_t)511;     /* rows padded to 512 bytes */
    void *p = NULL;
    CUresult r = track(&p, pitch * Height);
    if (r == CUDA_SUCCESS) {
        *dptr = (CUdeviceptr)(uintptr_t)p;
        *pPitch = pitch;
    }
    return r;
}

API CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                         unsigned long long flags)
{
    (void)flags;
    if (handle == NULL || prop == NULL || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (size >= too_big)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *handle = next_handle++;
    return CUDA_SUCCESS;
}

API CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    return (handle >= 0x1000 && handle < next_handle) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    (void)hStream;
    return cuMemAlloc_v2(dptr, bytesize);
}

API CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{
    (void)pool;
    (void)hStream;
    return cuMemAlloc_v2(dptr, bytesize);
}

/* cuMemHostRegister_v2 pins memory the caller owns: nothing is allocated, the range is
 * remembered so that unregistering an unknown address fails like the driver does */
static struct { uintptr_t p; size_t size; } registered[64];

API CUresult cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags)
{
    (void)Flags;
    if (p == NULL || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (int i = 0; i < 64; i++) {
        if (registered[i].p == 0) {
            registered[i].p = (uintptr_t)p;
            registered[i].size = bytesize;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_OUT_OF_MEMORY;
}

API CUresult cuMemHostUnregister(void *p)
{
    for (int i = 0; i < 64; i++) {
        if (registered[i].p == (uintptr_t)p && p != NULL) {
            registered[i].p = 0;
            return CUDA_SUCCESS;
        }
    }
    return CUDA_ERROR_INVALID_VALUE;
}

API CUresult cuMemFree_v2(CUdeviceptr dptr) { return untrack((uintptr_t)dptr); }
API CUresult cuMemFreeHost(void *p) { return untrack((uintptr_t)p); }
API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    (void)hStream;
    return untrack((uintptr_t)dptr);
}
