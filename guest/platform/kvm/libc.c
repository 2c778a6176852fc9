/* libc.c — KVM image overrides of the libc functions QuickJS reaches that would make
 * syscalls: the clocks (-> rdtsc + host-given base), localtime (UTC: the guest has no
 * time zone data) and abort/assert (-> an ABORT message to the host). The malloc
 * family comes from platform/common/libc_heap.c. The Makefile checks that the linked
 * image takes all of these from those two files, not from libc. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "platform.h"

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    (void)tz;
    if (tv) {
        int64_t ns = plat_wall_ns();
        tv->tv_sec = (time_t)(ns / 1000000000);
        tv->tv_usec = (suseconds_t)((ns % 1000000000) / 1000);
    }
    return 0;
}

int clock_gettime(clockid_t clock, struct timespec *ts)
{
    int64_t ns;
    switch (clock) {
    case CLOCK_REALTIME:
        ns = plat_wall_ns();
        break;
    case CLOCK_MONOTONIC:
    case CLOCK_MONOTONIC_RAW:
    case CLOCK_BOOTTIME:
    case CLOCK_PROCESS_CPUTIME_ID:
    case CLOCK_THREAD_CPUTIME_ID:
        ns = (int64_t)plat_monotonic_ns();
        break;
    default:
        errno = EINVAL;
        return -1;
    }
    ts->tv_sec = (time_t)(ns / 1000000000);
    ts->tv_nsec = (long)(ns % 1000000000);
    return 0;
}

time_t time(time_t *out)
{
    time_t t = (time_t)(plat_wall_ns() / 1000000000);
    if (out)
        *out = t;
    return t;
}

struct tm *localtime_r(const time_t *restrict t, struct tm *restrict tm) { return gmtime_r(t, tm); }

struct tm *localtime(const time_t *t)
{
    static struct tm tm;
    return gmtime_r(t, &tm);
}

_Noreturn void abort(void) { plat_abort("guest called abort()"); }

_Noreturn void __assert_fail(const char *expr, const char *file, int line, const char *func)
{
    char msg[256];
    snprintf(msg, sizeof msg, "assertion failed: %s (%s:%d, %s)", expr, file, line, func);
    plat_abort(msg);
}
