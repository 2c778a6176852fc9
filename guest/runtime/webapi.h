/* webapi.h — the guest's Web API globals (lazily installed groups from webapi/, crypto),
 * Math.random over random.c, and the hardened profile; called from runtime.c. */
#ifndef AIRLOCK_WEBAPI_H
#define AIRLOCK_WEBAPI_H

#include <stdint.h>

#include "codec.h"
#include "quickjs.h"

struct webapi_options {
    int binary;                  /* Uint8Array/ArrayBuffer cross as binary fields */
    int hardened;
    uint32_t time_resolution_us; /* hardened only; 0 = 1000 */
    int fixed_time;              /* hardened only: Date.now() is fixed_time_ms */
    int64_t fixed_time_ms;
    int fixed_random;            /* Math.random from random_seed, never reseeded */
    uint64_t random_seed;
};

/* Puts the globals on a new context: crypto, Math.random, performance.now and the lazy
 * accessors of every group. 0, or -1 with an exception pending. */
int webapi_context_init(JSContext *ctx);

/* Applies LOAD_RUNTIME's options to a context no user code has run in yet. 0, or -1 with
 * an exception pending (the context is then unusable). */
int webapi_configure(JSContext *ctx, const struct webapi_options *options);

/* Releases what webapi holds for ctx; call before JS_FreeContext. */
void webapi_context_free(JSContext *ctx);

/* Parses an options field of AIRLOCK_RUNTIME_OPTIONS_SIZE bytes. */
void webapi_options_parse(const uint8_t *bytes, struct webapi_options *out);

#endif /* AIRLOCK_WEBAPI_H */

/* A value as it crosses the boundary: JSON text (data NULL for `undefined`) and, with
 * binary data on, one field per Uint8Array/ArrayBuffer after it. Owns JS values: release
 * with webapi_encoded_free. */
struct webapi_encoded {
    struct field *fields; /* fields[0] is the JSON text; count >= 1 */
    uint32_t count;
    JSValue json;
    JSValue buffers;
    const char *text;
};

/* JSON.stringify semantics, or the binary encoding (webapi/binary.js) when it is on.
 * 0, or -1 with the JS exception pending. */
int webapi_encode(JSContext *ctx, JSValueConst value, struct webapi_encoded *out);
void webapi_encoded_free(JSContext *ctx, struct webapi_encoded *e);

/* The value of the JSON text in field `json_index` of `m`, with the binary fields after it
 * when binary data is on. JS_EXCEPTION with the exception pending on failure. */
JSValue webapi_decode(JSContext *ctx, const struct msg_view *m, uint32_t json_index, const char *filename);
