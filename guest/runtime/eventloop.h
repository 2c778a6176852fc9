/* eventloop.h — the guest event loop: timers, queueMicrotask, non-blocking host calls
 * (host:<m>?async) and fetch, driven by the runtime while a handler's promise is pending. */
#ifndef AIRLOCK_EVENTLOOP_H
#define AIRLOCK_EVENTLOOP_H

#include "quickjs.h"

/* The import suffix that makes a host module's functions return promises. */
#define EVENTLOOP_ASYNC_SUFFIX "?async"

/* Installs the loop's globals in a new context. 0, or -1 on OOM. */
int eventloop_install(JSContext *ctx);
/* Releases what eventloop_install kept, before the context is freed. */
void eventloop_release(JSContext *ctx);
/* One turn while a promise is pending and no job is left: 1 progress (run jobs, turn
 * again), 0 nothing left to wait for (or an uncaught error ended the request). */
int eventloop_turn(JSContext *ctx);
/* The first error a timer or microtask callback threw in this request (the caller owns
 * it), or JS_UNINITIALIZED. */
JSValue eventloop_take_uncaught(JSContext *ctx);
/* Cancels the request's timers and forgets its async host calls. */
void eventloop_end(JSContext *ctx);
/* Starts a non-blocking host call and returns its promise. */
JSValue eventloop_start_host_call(JSContext *ctx, const char *module, const char *function, JSValueConst args);

#endif /* AIRLOCK_EVENTLOOP_H */
