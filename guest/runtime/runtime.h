/* runtime.h — shared state and helpers of the guest runtime's own files (not a
 * target interface: that is platform.h). */
#ifndef AIRLOCK_RUNTIME_H
#define AIRLOCK_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "platform.h"
#include "quickjs.h"

/* The engine version READY reports. */
#define AIRLOCK_ENGINE_VERSION "QuickJS 2025-04-26"

/* The output buffer as described by the control block. */
struct out_buf runtime_output(void);
/* Publishes `out` (response_len) and the heap statistics to the control block. */
void runtime_publish(const struct out_buf *out);

/* Writes an ABORT message with `msg` (truncated to fit) after the console lines the
 * output buffer holds (alone when they leave no room). Used by targets' plat_abort
 * before their final exit. */
void airlock_write_abort(const char *msg);

/* The blocking host call: sends HOST_CALL(module, function, JSON of the `args` array),
 * exits, and returns the parsed HOST_RETURN (or throws HostFunctionError). */
JSValue runtime_host_call(JSContext *ctx, const char *module, const char *function, JSValueConst args);
/* runtime_host_call(ctx, "airlock:loop", "sleep", args), handed over with plat_exit_sleep. */
JSValue runtime_sleep_call(JSContext *ctx, JSValueConst args);

/* console.c: per-request console capture. */
void console_install(JSContext *ctx);
void console_begin_request(void);
/* Console messages are written into the output buffer as they happen (so a stopped
 * call's lines survive). Takes them into `out`, a fresh runtime_output(); -1 (out
 * unchanged) when they did not all fit. */
int console_write_pending(struct out_buf *out);
/* Appends the "N bytes dropped" notice when anything was dropped; -1 when it does not fit. */
int console_write_dropped_notice(struct out_buf *out);
/* The pending messages reached the host (after a HOST_CALL exit) or are given up: the
 * output buffer is free again (response_len 0). */
void console_clear_pending(void);
/* Bytes the pending console messages occupy once encoded. */
size_t console_pending_bytes(void);
/* Bytes of whole console messages at the start of the output buffer now (what
 * response_len shows while a call runs); at most the buffer's size. */
size_t console_written_bytes(void);

#endif /* AIRLOCK_RUNTIME_H */
