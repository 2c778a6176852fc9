/* platform.h — what the shared guest runtime (guest/runtime/) needs from a target.
 * Implemented once per target in guest/platform/<target>/: kvm (x86_64 micro-VM
 * image), wasm (wasm32 module driven by a worker thread), native (a Linux program
 * for tests and the native-quickjs benchmark). Nothing else in the runtime knows
 * which target it runs on.
 */
#ifndef AIRLOCK_PLATFORM_H
#define AIRLOCK_PLATFORM_H

#include <stdint.h>
#include "../include/abi.h"

/* The control block. Its host-written configuration (buffer addresses and sizes,
 * heap range, console limit) is valid before airlock_runtime_init() runs. */
struct airlock_control *plat_control(void);

/* Hands the output buffer to the host (control->response_len must be set) and
 * returns when the host has answered: after AIRLOCK_EXIT_HOST_CALL the input buffer
 * holds the HOST_RETURN message. The runtime only calls it with
 * AIRLOCK_EXIT_HOST_CALL; final responses are delivered by the target's main loop
 * (KVM: `out` then wait for the next request; wasm: return from the export). */
void plat_exit(uint32_t exit_kind);

/* plat_exit(AIRLOCK_EXIT_HOST_CALL) for the event loop's timer sleep (an `airlock:loop`
 * `sleep` step in the output buffer): the host sleeps the guest where it stopped, with
 * no other thread in the way. KVM always exits, since its vCPU thread serves the sleep
 * (host/src/loop_wait.cc), while a call handed over in memory would be dispatched to
 * the main thread with the guest spinning up to host_call_ticks for the answer; other
 * targets: plat_exit (the wasm worker serves the sleep itself). */
void plat_exit_sleep(void);

/* Unix time in nanoseconds (Date.now) and a monotonic clock (performance.now). */
int64_t plat_wall_ns(void);
uint64_t plat_monotonic_ns(void);

/* Polled from QuickJS's interrupt handler while JS runs. Nonzero: the host asked to
 * cancel the request; the runtime stops JS (uncatchable) and answers RESULT with
 * AIRLOCK_STATUS_INTERRUPTED. KVM returns 0 (the host interrupts the vCPU instead);
 * wasm reads a flag the host sets in shared memory. Must be cheap. */
int plat_interrupt_requested(void);

/* The guest cannot continue: report `msg` to the host as an ABORT and never return. */
_Noreturn void plat_abort(const char *msg);

/* Targets built with AIRLOCK_WEBAPI_EXTERNAL (wasm), whose Web API sources stay with the
 * host: copies `len` bytes from `offset` of the prelude blob to `dst`; 0, or -1 when the
 * range is not the blob's. */
int plat_webapi_read(uint32_t offset, char *dst, uint32_t len);

/* Entry points of the shared runtime, called by the target's main loop. */

/* Creates the JS runtime; writes READY (or ABORT on failure) into the output buffer
 * and sets control->response_len. */
void airlock_runtime_init(void);

/* Handles the request in the input buffer (control->request_len bytes) and writes
 * console messages plus exactly one final message into the output buffer, setting
 * control->response_len. May call plat_exit(AIRLOCK_EXIT_HOST_CALL) any number of
 * times while it runs. */
void airlock_runtime_handle(void);

/* Work the last request left for after its response was delivered: the post-call GC
 * (AIRLOCK_CALL_FLAG_GC, or after the heap ran out). Targets call it once the host
 * has the response, so the collection overlaps the host's handling of the result;
 * airlock_runtime_handle runs it first if a target did not. */
void airlock_runtime_after(void);

#endif /* AIRLOCK_PLATFORM_H */
