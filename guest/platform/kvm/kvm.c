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

void kvm_out(uint32_t exit_kind); /* start.S: the one exit instruction */

_Noreturn void plat_abort(const char *msg)
{
    airlock_write_abort(msg);
    for (;;)
        kvm_out(AIRLOCK_EXIT_ABORT);
}

static inline uint32_t poll_state(void) { return __atomic_load_n(&control.poll_state, __ATOMIC_ACQUIRE); }

static inline int poll_swap(uint32_t from, uint32_t to)
{
    return __atomic_compare_exchange_n(&control.poll_state, &from, to, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* A host call while a host thread watches (REQUEST) is handed over in memory: an exit
 * costs more than the whole round trip through the host's event loop. Returns 0 when
 * the call must still be made with an exit (nobody watches, or nobody took it in
 * time); 1 when the HOST_RETURN is in the input buffer. */
static int host_call_in_memory(void)
{
    uint64_t ticks = control.host_call_ticks;
    if (ticks == 0 || !poll_swap(AIRLOCK_POLL_REQUEST, AIRLOCK_POLL_HOST_CALL))
        return 0;
    /* The whole wait, the take included: the watcher may just be waking up for the
     * request (a futex wake-up costs tens of microseconds on a nested host). */
    uint64_t deadline = rdtsc() + ticks;
    for (;;) {
        uint32_t s = poll_state();
        if (s == AIRLOCK_POLL_REQUEST || s == AIRLOCK_POLL_REQUEST_EXIT)
            return 1; /* the acquire load above makes the reply's bytes visible */
        if (rdtsc() < deadline) {
            __builtin_ia32_pause();
            continue;
        }
        /* Too late: exactly one side owns the call, whoever wins the swap. */
        if (s == AIRLOCK_POLL_HOST_CALL && poll_swap(AIRLOCK_POLL_HOST_CALL, AIRLOCK_POLL_REQUEST_EXIT))
            return 0;
        if (s == AIRLOCK_POLL_HOST_CALL_TAKEN &&
            poll_swap(AIRLOCK_POLL_HOST_CALL_TAKEN, AIRLOCK_POLL_HOST_CALL_EXIT)) {
            /* Taken: the host answers this exit with the reply of the call it took. */
            kvm_out(AIRLOCK_EXIT_HOST_CALL);
            return 1;
        }
        /* The state moved under us: look again. */
    }
}

void plat_exit(uint32_t exit_kind)
{
    if (exit_kind == AIRLOCK_EXIT_HOST_CALL && host_call_in_memory())
        return;
    kvm_out(exit_kind);
}

/* Never in memory (platform.h). A host thread watching the request lets go when it
 * sees REQUEST_EXIT, as when a call in memory falls back to its exit. */
void plat_exit_sleep(void)
{
    poll_swap(AIRLOCK_POLL_REQUEST, AIRLOCK_POLL_REQUEST_EXIT);
    kvm_out(AIRLOCK_EXIT_HOST_CALL);
}

/* The response is in the output buffer: hand it to a spinning host through memory,
 * else exit. After the exit the host re-enters us to poll (READY) or with the next
 * request (REQUEST_EXIT). */
static void deliver(void)
{
    if (!poll_swap(AIRLOCK_POLL_REQUEST, AIRLOCK_POLL_READY))
        kvm_out(AIRLOCK_EXIT_RESPONSE);
}

/* Returns when poll_state holds a request. Spins for the host's poll window first:
 * a request arriving in it costs no exit. Then parks (IDLE) and exits until the
 * host re-enters with a request. */
static void await_request(void)
{
    uint64_t deadline = rdtsc() + control.poll_ticks;
    for (;;) {
        uint32_t s = poll_state();
        if (s == AIRLOCK_POLL_REQUEST || s == AIRLOCK_POLL_REQUEST_EXIT)
            return;
        if (s == AIRLOCK_POLL_READY) {
            if (rdtsc() < deadline) {
                __builtin_ia32_pause();
                continue;
            }
            if (!poll_swap(AIRLOCK_POLL_READY, AIRLOCK_POLL_IDLE))
                continue; /* a request won the race */
        }
        kvm_out(AIRLOCK_EXIT_IDLE);
        deadline = rdtsc() + control.poll_ticks;
    }
}

_Noreturn void airlock_kvm_main(void);

_Noreturn void airlock_kvm_main(void)
{
    /* musl's start-up code (skipped: it makes syscalls) would point the thread's
     * locale at the global C locale; uselocale does just that, with no syscall. */
    uselocale(LC_GLOBAL_LOCALE);
    control.guest_flags = AIRLOCK_GUEST_FLAG_POLLS;
    airlock_runtime_init();
    for (;;) {
        /* Without a poll window the host will not run us again until the next
         * request: collect now, and not again when the request re-enters us. With
         * one, the post-call work runs while the host already has the result. */
        int collected = control.poll_ticks == 0;
        if (collected)
            airlock_runtime_after();
        deliver();
        if (!collected)
            airlock_runtime_after();
        await_request();
        airlock_runtime_handle();
    }
}
