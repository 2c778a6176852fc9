/* kvm.c — the KVM micro-VM target: image header, control block, libc thread block,
 * clocks from rdtsc, and the request loop. Runs entirely at CPL 3 with no kernel:
 * nothing here (or reachable from the runtime) may make a syscall. */
#include <locale.h>
#include <stdint.h>

#include "platform.h"
#include "runtime.h"

extern char __image_start[], __file_end[], __bss_end[], __data_start[];
void _start(void);

/* Shared with the host, which writes its configuration before the first instruction. */
static struct airlock_control control __attribute__((aligned(4096), section(".bss.airlock_control")));

/* libc's thread pointer target (FS base). musl reads %fs:0 to find its thread block and
 * keeps errno and the locale pointer in it; the rest stays zero. */
static uint64_t tls_block[128] __attribute__((aligned(64))) = {(uint64_t)(uintptr_t)tls_block};

__attribute__((used, section(".airlock_header"))) static const struct airlock_image_header image_header = {
    .magic = AIRLOCK_IMAGE_MAGIC,
    .abi_version = AIRLOCK_ABI_VERSION,
    .load_addr = (uint64_t)(uintptr_t)__image_start,
    .entry = (uint64_t)(uintptr_t)_start,
    .file_end = (uint64_t)(uintptr_t)__file_end,
    .bss_end = (uint64_t)(uintptr_t)__bss_end,
    .data_start = (uint64_t)(uintptr_t)__data_start,
    .control = (uint64_t)(uintptr_t)&control,
    .tls_block = (uint64_t)(uintptr_t)tls_block,
};

struct airlock_control *plat_control(void) { return &control; }

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

static uint64_t tsc_to_ns(uint64_t ticks)
{
    uint64_t khz = control.tsc_khz;
    if (khz == 0)
        return 0;
    return (uint64_t)((unsigned __int128)ticks * 1000000u / khz);
}

int64_t plat_wall_ns(void)
{
    uint64_t now = rdtsc();
    uint64_t since = now > control.tsc_base ? now - control.tsc_base : 0;
    return control.wall_ns_base + (int64_t)tsc_to_ns(since);
}

uint64_t plat_monotonic_ns(void) { return tsc_to_ns(rdtsc()); }

/* The host cancels a KVM guest by stopping its vCPU, not through this flag. */
int plat_interrupt_requested(void) { return 0; }

_Noreturn void plat_abort(const char *msg)
{
    airlock_write_abort(msg);
    for (;;)
        plat_exit(AIRLOCK_EXIT_ABORT);
}

_Noreturn void airlock_kvm_main(void);

_Noreturn void airlock_kvm_main(void)
{
    /* musl's start-up code (skipped: it makes syscalls) would point the thread's
     * locale at the global C locale; uselocale does just that, with no syscall. */
    uselocale(LC_GLOBAL_LOCALE);
    airlock_runtime_init();
    for (;;) {
        plat_exit(AIRLOCK_EXIT_RESPONSE);
        airlock_runtime_handle();
    }
}
