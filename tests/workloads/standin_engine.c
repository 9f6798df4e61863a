/* STAND-IN for an inference engine on an integrated-memory GPU (tests/test_ab.py, docs/ab.md).
 * No GPU, no model: it does only the memory arithmetic an engine does at start-up, with MemFree
 * in place of cudaMemGetInfo free (on an integrated GPU the driver reports MemFree as free memory:
 * docs/facts.md, GB10), and prints the result in vLLM's log format.
 *
 *   standin_engine MODEL [UTILIZATION=0.9] [WARMUP_MS=2000] [KV_MIB=16]
 *
 * Follows vLLM v1 (vllm/v1/worker/gpu_worker.py, 0.10.x): a snapshot of free and total memory at
 * start-up; requested = utilization x total; the model is loaded (here: MODEL mmapped and every
 * page touched, as safetensors are mapped); the KV cache gets requested minus everything that
 * became used since the snapshot. So page cache the load brings in is taken from the KV cache,
 * and a model already cached before the start costs nothing. Then, with the model still mapped, it
 * "warms up" for WARMUP_MS (where vLLM captures CUDA graphs), allocates and touches KV_MIB MiB of
 * anonymous memory as its KV cache (a token amount: the stand-in has no GPU to put it on), holds it
 * for 500 ms and exits. Static, so it runs in a busybox image. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long meminfo_bytes(const char *key)
{
    char line[256];
    size_t n = strlen(key);
    long long kb = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') {
            kb = atoll(line + n + 1);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [UTILIZATION] [WARMUP_MS] [KV_MIB]\n", argv[0]);
        return 2;
    }
    double util = argc > 2 ? atof(argv[2]) : 0.9;
    long warmup_ms = argc > 3 ? atol(argv[3]) : 2000;
    long kv_mib = argc > 4 ? atol(argv[4]) : 16;
    long long total = meminfo_bytes("MemTotal"), free0 = meminfo_bytes("MemFree");
    int fd = open(argv[1], O_RDONLY);
    struct stat st;
    if (total < 0 || free0 < 0 || fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0) {
        perror(argv[1]);
        return 1;
    }
    volatile const char *m = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    long page = sysconf(_SC_PAGESIZE);
    char sum = 0;
    for (off_t off = 0; off < st.st_size; off += page)
        sum += m[off];
    long long free1 = meminfo_bytes("MemFree");
    long long kv = (long long)(util * total) - (free0 - free1);
    time_t now = time(NULL);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%m-%d %H:%M:%S", localtime(&now));
    printf("INFO %s [gpu_worker.py:276] Available KV cache memory: %.2f GiB\n", stamp, kv / 1073741824.0);
    fflush(stdout);
    struct timespec warmup = {warmup_ms / 1000, (warmup_ms % 1000) * 1000000L}, serve = {0, 500000000L};
    nanosleep(&warmup, NULL);
    char *cache = malloc(kv_mib << 20);
    if (!cache) {
        perror("malloc");
        return 1;
    }
    memset(cache, 1, kv_mib << 20);
    nanosleep(&serve, NULL);
    return cache[kv_mib] - 1;
}
