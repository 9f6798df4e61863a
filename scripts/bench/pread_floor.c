/* The floor for one sample: pread each already-open file once at offset 0, no parsing.
 * Usage: pread_floor ITERS FILE...   prints ns per round and ns per file (median of 5 runs). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    static char buf[65536];
    int iters = atoi(argv[1]), n = argc - 2;
    int *fd = calloc((size_t)n, sizeof(int));
    long long runs[5], *per = calloc((size_t)n, sizeof(long long));

    for (int i = 0; i < n; i++)
        if ((fd[i] = open(argv[i + 2], O_RDONLY)) < 0) {
            perror(argv[i + 2]);
            return 1;
        }
    for (int r = 0; r < 5; r++) {
        long long t0 = now();
        for (int k = 0; k < iters; k++)
            for (int i = 0; i < n; i++)
                if (pread(fd[i], buf, sizeof(buf), 0) < 0)
                    return 2;
        runs[r] = (now() - t0) / iters;
    }
    for (int i = 0; i < n; i++) {
        long long t0 = now();
        for (int k = 0; k < iters; k++)
            pread(fd[i], buf, sizeof(buf), 0);
        per[i] = (now() - t0) / iters;
    }
    qsort(runs, 5, sizeof(runs[0]), cmp);
    printf("%lld\n", runs[2]);
    for (int i = 0; i < n; i++)
        printf("%lld %s\n", per[i], argv[i + 2]);
    return 0;
}
