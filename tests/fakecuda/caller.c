/*
 * Calls the CUDA driver allocation entry points with known sizes, for the probe tests.
 * Loads the library like the CUDA runtime does (dlopen), here from the path in argv[1]
 * (the stand-in tests/fakecuda/fake_libcuda.c built as libcuda.so.1).
 * Protocol on stdin/stdout, one line each: prints "ready" after dlopen; on "alloc" makes the
 * allocations (and two calls that must fail) and prints "allocated"; on "free" frees all of
 * them (and one unknown pointer, which must fail) and prints "freed"; on "exit" exits.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct { int type; int requestedHandleTypes; struct { int type; int id; } location;
                 void *win32HandleMetaData; unsigned char allocFlags[8]; } CUmemAllocationProp;

#define SYM(name) name = dlsym(h, #name); if (!name) { fprintf(stderr, "missing %s\n", #name); return 2; }
#define CHECK(call, want) do { CUresult r_ = (call); if (r_ != (want)) { \
    fprintf(stderr, "%s returned %d, wanted %d\n", #call, r_, (want)); return 3; } } while (0)

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: caller LIBCUDA\n");
        return 1;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    CUresult (*cuInit)(unsigned);
    CUresult (*cuMemAlloc_v2)(CUdeviceptr *, size_t);
    CUresult (*cuMemAllocManaged)(CUdeviceptr *, size_t, unsigned);
    CUresult (*cuMemAllocHost_v2)(void **, size_t);
    CUresult (*cuMemHostAlloc)(void **, size_t, unsigned);
    CUresult (*cuMemAllocPitch_v2)(CUdeviceptr *, size_t *, size_t, size_t, unsigned);
    CUresult (*cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
    CUresult (*cuMemAllocAsync)(CUdeviceptr *, size_t, void *);
    CUresult (*cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, void *, void *);
    CUresult (*cuMemFree_v2)(CUdeviceptr);
    CUresult (*cuMemFreeHost)(void *);
    CUresult (*cuMemRelease)(CUmemGenericAllocationHandle);
    CUresult (*cuMemFreeAsync)(CUdeviceptr, void *);
    CUresult (*cuMemHostRegister_v2)(void *, size_t, unsigned);
    CUresult (*cuMemHostUnregister)(void *);
    SYM(cuInit) SYM(cuMemAlloc_v2) SYM(cuMemAllocManaged) SYM(cuMemAllocHost_v2) SYM(cuMemHostAlloc)
    SYM(cuMemAllocPitch_v2) SYM(cuMemCreate) SYM(cuMemAllocAsync) SYM(cuMemAllocFromPoolAsync)
    SYM(cuMemFree_v2) SYM(cuMemFreeHost) SYM(cuMemRelease) SYM(cuMemFreeAsync)
    SYM(cuMemHostRegister_v2) SYM(cuMemHostUnregister)
    CHECK(cuInit(0), 0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");

    CUdeviceptr d1 = 0, d2 = 0, m1 = 0, pitched = 0, a1 = 0, a2 = 0, bad = 0;
    void *hp1 = NULL, *hp2 = NULL;
    static char registered[3u << 20];     /* memory the process owns, pinned by cuMemHostRegister_v2 */
    size_t pitch = 0;
    CUmemGenericAllocationHandle v1 = 0, v2 = 0;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof(prop));
    prop.type = 1;              /* CU_MEM_ALLOCATION_TYPE_PINNED */
    prop.location.type = 1;     /* CU_MEM_LOCATION_TYPE_DEVICE */
    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        if (strncmp(line, "alloc", 5) == 0) {
            CHECK(cuMemAlloc_v2(&d1, 64u << 20), 0);                 /* device 64 MiB */
            CHECK(cuMemAlloc_v2(&d2, (1u << 20) + 4096), 0);         /* device 1 MiB + 4 KiB */
            CHECK(cuMemAllocManaged(&m1, 32u << 20, 1), 0);          /* managed 32 MiB */
            CHECK(cuMemAllocHost_v2(&hp1, 8u << 20), 0);             /* host-pinned 8 MiB */
            CHECK(cuMemHostAlloc(&hp2, 4u << 20, 0), 0);             /* host-pinned 4 MiB */
            CHECK(cuMemAllocPitch_v2(&pitched, &pitch, 1000, 300, 4), 0);   /* device 1024 x 300 */
            CHECK(cuMemCreate(&v1, 2u << 20, &prop, 0), 0);          /* vmm 2 MiB */
            CHECK(cuMemCreate(&v2, 6u << 20, &prop, 0), 0);          /* vmm 6 MiB */
            CHECK(cuMemAllocAsync(&a1, 16u << 20, NULL), 0);         /* pool 16 MiB */
            CHECK(cuMemAllocFromPoolAsync(&a2, 8u << 20, NULL, NULL), 0);   /* pool 8 MiB */
            CHECK(cuMemHostRegister_v2(registered, sizeof(registered), 0), 0);   /* host-registered 3 MiB */
            CHECK(cuMemAlloc_v2(&bad, 0), 1);                        /* CUDA_ERROR_INVALID_VALUE */
            CHECK(cuMemAlloc_v2(&bad, (size_t)1 << 50), 2);          /* CUDA_ERROR_OUT_OF_MEMORY */
            printf("allocated pitch=%zu\n", pitch);
        } else if (strncmp(line, "free", 4) == 0) {
            CHECK(cuMemFree_v2(d1), 0);
            CHECK(cuMemFree_v2(d2), 0);
            CHECK(cuMemFree_v2(m1), 0);
            CHECK(cuMemFreeHost(hp1), 0);
            CHECK(cuMemFreeHost(hp2), 0);
            CHECK(cuMemFree_v2(pitched), 0);
            CHECK(cuMemRelease(v1), 0);
            CHECK(cuMemRelease(v2), 0);
            CHECK(cuMemFreeAsync(a1, NULL), 0);
            CHECK(cuMemFreeAsync(a2, NULL), 0);
            CHECK(cuMemHostUnregister(registered), 0);
            CHECK(cuMemFree_v2((CUdeviceptr)0xdead0000ull), 1);    /* unknown pointer: fails */
            printf("freed\n");
        } else if (strncmp(line, "exit", 4) == 0) {
            break;
        }
    }
    return 0;
}
