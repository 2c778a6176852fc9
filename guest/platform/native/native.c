/* native.c — the native target: the guest runtime as a Linux program. The host side
 * frames requests on stdin (u32le length + message) and this program answers on
 * stdout (u32le exit kind + u32le length + output bytes); after a HOST_CALL answer it
 * reads the HOST_RETURN the same way. Used by tests and the native-quickjs benchmark.
 * SIGUSR1 asks the running request to stop (plat_interrupt_requested); SIGUSR2 makes
 * it abort there instead, so tests can make the real runtime abort mid-call. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "platform.h"
#include "runtime.h"

static struct airlock_control control;
static volatile sig_atomic_t interrupt_flag;
static volatile sig_atomic_t abort_flag;

struct airlock_control *plat_control(void) { return &control; }

static int read_exact(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n) {
        ssize_t r = read(0, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void write_exact(const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t r = write(1, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            _exit(2); /* the host went away */
        p += r;
        n -= (size_t)r;
    }
}

static void put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void send_output(uint32_t exit_kind)
{
    uint8_t head[8];
    uint32_t len = control.response_len <= control.output_size ? control.response_len : (uint32_t)control.output_size;
    put_u32le(head, exit_kind);
    put_u32le(head + 4, len);
    write_exact(head, sizeof head);
    write_exact((const void *)(uintptr_t)control.output_addr, len);
}

/* Reads one framed message into the input buffer. A message larger than the buffer
 * is consumed and reported through request_len, which the runtime rejects.
 * Returns -1 at end of input. */
static int receive_request(void)
{
    uint8_t head[4];
    if (read_exact(head, 4) < 0)
        return -1;
    uint32_t len = (uint32_t)head[0] | (uint32_t)head[1] << 8 | (uint32_t)head[2] << 16 | (uint32_t)head[3] << 24;
    uint8_t *input = (uint8_t *)(uintptr_t)control.input_addr;
    uint32_t keep = len <= control.input_size ? len : (uint32_t)control.input_size;
    if (read_exact(input, keep) < 0)
        return -1;
    for (uint32_t left = len - keep; left;) {
        uint8_t sink[4096];
        uint32_t n = left < sizeof sink ? left : (uint32_t)sizeof sink;
        if (read_exact(sink, n) < 0)
            return -1;
        left -= n;
    }
    control.request_len = len;
    interrupt_flag = 0;
    return 0;
}

void plat_exit(uint32_t exit_kind)
{
    send_output(exit_kind);
    if (exit_kind == AIRLOCK_EXIT_HOST_CALL && receive_request() < 0)
        exit(0);
}

void plat_exit_sleep(void) { plat_exit(AIRLOCK_EXIT_HOST_CALL); }

int64_t plat_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t plat_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int plat_interrupt_requested(void)
{
    if (abort_flag)
        plat_abort("abort requested by SIGUSR2");
    return interrupt_flag;
}

_Noreturn void plat_abort(const char *msg)
{
    airlock_write_abort(msg);
    send_output(AIRLOCK_EXIT_ABORT);
    _exit(3);
}

static void on_sigusr1(int sig)
{
    (void)sig;
    interrupt_flag = 1;
}

static void on_sigusr2(int sig)
{
    (void)sig;
    abort_flag = 1;
}

static uint64_t parse_size(const char *flag, const char *text)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 0);
    if (errno || *end || v == 0 || text[0] == '-') {
        fprintf(stderr, "airlock-native: %s needs a positive byte count, got '%s'\n", flag, text);
        exit(64);
    }
    return v;
}

static void *map_region(uint64_t size, const char *what)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "airlock-native: cannot map %llu bytes for the %s\n", (unsigned long long)size, what);
        exit(70);
    }
    return p;
}

int main(int argc, char **argv)
{
    uint64_t heap = 64u << 20, input = 1u << 20, output = 1u << 20, console_limit = 65536;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) {
            fprintf(stderr, "usage: airlock-native [--heap-size N] [--input-size N] [--output-size N] [--console-limit N]\n");
            return 64;
        }
        if (strcmp(a, "--heap-size") == 0)
            heap = parse_size(a, argv[++i]);
        else if (strcmp(a, "--input-size") == 0)
            input = parse_size(a, argv[++i]);
        else if (strcmp(a, "--output-size") == 0)
            output = parse_size(a, argv[++i]);
        else if (strcmp(a, "--console-limit") == 0)
            console_limit = parse_size(a, argv[++i]);
        else {
            fprintf(stderr, "airlock-native: unknown option '%s'\n", a);
            return 64;
        }
    }
    if (input > UINT32_MAX || output > UINT32_MAX) {
        fprintf(stderr, "airlock-native: buffer sizes must be below 4 GiB\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigusr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_sigusr2;
    sigaction(SIGUSR2, &sa, NULL);

    /* QuickJS measures its stack from where the runtime is created (in main's
     * callee); give it half the process stack so deep recursion is a JS error. */
    struct rlimit rl;
    uint64_t stack = 8u << 20;
    if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < stack)
        stack = rl.rlim_cur;
    control.stack_size = stack / 2;
    control.stack_top = (uint64_t)(uintptr_t)__builtin_frame_address(0);
    control.input_addr = (uint64_t)(uintptr_t)map_region(input, "input buffer");
    control.input_size = input;
    control.output_addr = (uint64_t)(uintptr_t)map_region(output, "output buffer");
    control.output_size = output;
    control.heap_addr = (uint64_t)(uintptr_t)map_region(heap, "heap");
    control.heap_size = heap;
    control.console_limit = console_limit;

    airlock_runtime_init();
    for (;;) {
        send_output(AIRLOCK_EXIT_RESPONSE);
        airlock_runtime_after();
        if (receive_request() < 0)
            return 0;
        airlock_runtime_handle();
    }
}
