/* memhog: touch exactly N MiB of anonymous memory, say so, then sleep.
 *
 *   memhog N            touch N MiB, print "ready N", sleep until SIGTERM/SIGINT (exit 0)
 *   memhog N M          same, and on SIGUSR1 grow to M MiB in total, printing "grown M"
 *                       (choose M above the container's limit to get it OOM-killed)
 *
 * Built statically (gcc -static) so it runs in a busybox-static image with no libc.
 * Every page is written (not just read) so each one is really allocated and charged to
 * the memory cgroup; a read of untouched anonymous memory maps the shared zero page.
 * Runs as PID 1 in a container, where the kernel drops signals that have no handler,
 * so SIGTERM/SIGINT get handlers (kernel/signal.c sig_task_ignored for SIGNAL_UNKILLABLE).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)

static volatile sig_atomic_t stop, grow;

static void on_stop(int sig) { (void)sig; stop = 1; }
static void on_grow(int sig) { (void)sig; grow = 1; }

static int parse_mib(const char *s, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v > 1024UL * 1024UL)
        return -1;
    *out = v;
    return 0;
}

/* Map `mib` MiB and write one byte in every page. Returns 0 or -errno. */
static int touch(unsigned long mib)
{
    if (mib == 0)
        return 0;
    size_t len = mib * MIB;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    long page = sysconf(_SC_PAGESIZE);
    for (size_t off = 0; off < len; off += (size_t)page)
        p[off] = 1;
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long first, total = 0;
    if (argc < 2 || argc > 3 || parse_mib(argv[1], &first) ||
        (argc == 3 && (parse_mib(argv[2], &total) || total < first))) {
        fprintf(stderr, "usage: memhog N_MIB [GROW_TO_MIB]\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_grow;
    sigaction(SIGUSR1, &sa, NULL);
    /* Block the three signals outside sigsuspend() so none is lost between the flag
     * checks and the wait (the classic pause() race). */
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    sigdelset(&waitmask, SIGUSR1);

    int rc = touch(first);
    if (rc) {
        fprintf(stderr, "memhog: mmap %lu MiB: %s\n", first, strerror(-rc));
        return 1;
    }
    printf("ready %lu\n", first);
    fflush(stdout);
    while (!stop) {
        sigsuspend(&waitmask);
        if (grow && total > first) {
            grow = 0;
            rc = touch(total - first);
            if (rc) {
                fprintf(stderr, "memhog: mmap %lu MiB: %s\n", total - first, strerror(-rc));
                return 1;
            }
            first = total;
            printf("grown %lu\n", total);
            fflush(stdout);
        }
    }
    return 0;
}
