/* webapi.c — the guest's Web API globals: crypto.getRandomValues/randomUUID and Math.random
 * over random.c, the JavaScript groups of webapi/ (embedded by scripts/build-prelude.mjs)
 * installed on first use, clocks, and the hardened profile (webapi/harden.js). */
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "random.h"
#include "runtime.h"
#include "webapi.h"

struct webapi_group {
    const char *name;
    const char *source; /* NUL-terminated, `len` bytes before the NUL; NULL: external */
    uint32_t offset;    /* where the source starts in the host's prelude blob */
    uint32_t len;
    const char *const *globals; /* NULL-terminated */
    int on_demand;              /* an internal group a loaded group may ask for by name */
};
#include "webapi_prelude.gen.h"

/* The group that webapi/harden.js is built as: evaluated eagerly, never exposed. */
#define HARDEN_GROUP_NAME "harden"
/* The group of webapi/binary.js: evaluated when binary data is on, never exposed. */
#define BINARY_GROUP_NAME "binary"
/* crypto.getRandomValues refuses more than this, as the Web Crypto standard does. */
#define MAX_RANDOM_BYTES 65536

enum { GROUP_ABSENT, GROUP_LOADING, GROUP_LOADED };

/* Web IDL: a global operation (atob, structuredClone) is enumerable, an interface
 * (URL, TextEncoder) is not; interfaces are the capitalised names. */
static int global_flags(const char *name)
{
    int flags = JS_PROP_WRITABLE | JS_PROP_CONFIGURABLE;
    return name[0] >= 'a' && name[0] <= 'z' ? flags | JS_PROP_ENUMERABLE : flags;
}

static struct {
    /* Per context (one live context at a time). */
    struct webapi_options options;
    JSValue harden_fn;                       /* hardened: freezes a lazily loaded value */
    JSValue binary_encode, binary_decode;    /* binary data on: webapi/binary.js */
    JSValue cached[WEBAPI_GROUP_COUNT][8];   /* hardened: the values of loaded groups */
    int loaded[WEBAPI_GROUP_COUNT];
    uint64_t boot_ns;
} wa;

static const struct webapi_group *group_named(const char *name)
{
    for (uint32_t i = 0; i < WEBAPI_GROUP_COUNT; i++)
        if (strcmp(webapi_groups[i].name, name) == 0)
            return &webapi_groups[i];
    return NULL;
}

/* Evaluates group `g`'s script: its completion value is the object of its exports. */
static JSValue group_evaluate(JSContext *ctx, const struct webapi_group *g)
{
    char filename[64];
    snprintf(filename, sizeof filename, "airlock:webapi/%s", g->name);
#ifdef AIRLOCK_WEBAPI_EXTERNAL
    /* The WebAssembly guest keeps the sources (~360 KiB) out of its linear memory, whose
     * static data every restore copies: the host copies one group in when it is used. */
    char *src = airlock_malloc((size_t)g->len + 1);
    if (!src)
        return JS_ThrowOutOfMemory(ctx);
    if (plat_webapi_read(g->offset, src, g->len) != 0) {
        airlock_free(src);
        return JS_ThrowInternalError(ctx, "the source of the Web API group %s is not available", g->name);
    }
    src[g->len] = '\0';
    JSValue v = JS_Eval(ctx, src, g->len, filename, JS_EVAL_TYPE_GLOBAL | JS_EVAL_FLAG_STRICT);
    airlock_free(src);
    return v;
#else
    return JS_Eval(ctx, g->source, g->len, filename, JS_EVAL_TYPE_GLOBAL | JS_EVAL_FLAG_STRICT);
#endif
}

/* ---------------------------------------------------------------------------
 * Lazy globals. Each accessor's magic is group * 8 + index of the global in its group. */

/* loadGroup(name) for a group's setGroupLoader: evaluates an on-demand internal group and
 * returns its exports (frozen under the hardened profile). */
static JSValue js_load_group(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    const char *name = argc ? JS_ToCString(ctx, argv[0]) : NULL;
    if (!name)
        return JS_EXCEPTION;
    const struct webapi_group *g = group_named(name);
    JS_FreeCString(ctx, name);
    if (!g || !g->on_demand)
        return JS_ThrowReferenceError(ctx, "no such internal group");
    JSValue exports = group_evaluate(ctx, g);
    if (JS_IsException(exports) || !wa.options.hardened)
        return exports;
    JSValue frozen = JS_Call(ctx, wa.harden_fn, JS_UNDEFINED, 1, (JSValueConst *)&exports);
    JS_FreeValue(ctx, exports);
    return frozen;
}

/* Hands a group that exports setGroupLoader the means to load on-demand groups. */
static int offer_group_loader(JSContext *ctx, JSValueConst exports)
{
    JSValue setter = JS_GetPropertyStr(ctx, exports, "setGroupLoader");
    if (JS_IsException(setter))
        return -1;
    int rc = 0;
    if (JS_IsFunction(ctx, setter)) {
        JSValue loader = JS_NewCFunction(ctx, js_load_group, "loadGroup", 1);
        JSValue r = JS_Call(ctx, setter, JS_UNDEFINED, 1, (JSValueConst *)&loader);
        rc = JS_IsException(r) ? -1 : 0;
        JS_FreeValue(ctx, r);
        JS_FreeValue(ctx, loader);
    }
    JS_FreeValue(ctx, setter);
    return rc;
}

static JSValue lazy_load_group(JSContext *ctx, uint32_t gi)
{
    const struct webapi_group *g = &webapi_groups[gi];
    JSValue exports = group_evaluate(ctx, g);
    if (JS_IsException(exports))
        return exports;
    if (offer_group_loader(ctx, exports) < 0) {
        JS_FreeValue(ctx, exports);
        return JS_EXCEPTION;
    }
    JSValue global = JS_GetGlobalObject(ctx);
    for (uint32_t k = 0; g->globals[k]; k++) {
        JSValue v = JS_GetPropertyStr(ctx, exports, g->globals[k]);
        if (JS_IsException(v)) {
            JS_FreeValue(ctx, global);
            JS_FreeValue(ctx, exports);
            return v;
        }
        if (wa.options.hardened) {
            /* The exports object holds getters: each value is frozen itself. */
            JSValue frozen = JS_Call(ctx, wa.harden_fn, JS_UNDEFINED, 1, (JSValueConst *)&v);
            if (JS_IsException(frozen)) {
                JS_FreeValue(ctx, v);
                JS_FreeValue(ctx, global);
                JS_FreeValue(ctx, exports);
                return frozen;
            }
            JS_FreeValue(ctx, frozen);
            /* The binding is a non-configurable accessor: keep the value here. */
            JS_FreeValue(ctx, wa.cached[gi][k]);
            wa.cached[gi][k] = v;
        } else {
            JS_DefinePropertyValueStr(ctx, global, g->globals[k], v, global_flags(g->globals[k]));
        }
    }
    JS_FreeValue(ctx, global);
    JS_FreeValue(ctx, exports);
    wa.loaded[gi] = GROUP_LOADED;
    return JS_UNDEFINED;
}

static JSValue lazy_get(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv, int magic)
{
    uint32_t gi = (uint32_t)magic / 8, k = (uint32_t)magic % 8;
    if (wa.loaded[gi] == GROUP_LOADING)
        return JS_UNDEFINED; /* the group's own code probes for what it defines */
    if (wa.loaded[gi] == GROUP_ABSENT) {
        wa.loaded[gi] = GROUP_LOADING;
        JSValue r = lazy_load_group(ctx, gi);
        if (JS_IsException(r)) {
            wa.loaded[gi] = GROUP_ABSENT;
            return r;
        }
    }
    if (wa.options.hardened)
        return JS_DupValue(ctx, wa.cached[gi][k]);
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue v = JS_GetPropertyStr(ctx, global, webapi_groups[gi].globals[k]);
    JS_FreeValue(ctx, global);
    return v;
}

/* Assigning a lazy global before its first read replaces it, as with any global. */
static JSValue lazy_set(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv, int magic)
{
    uint32_t gi = (uint32_t)magic / 8, k = (uint32_t)magic % 8;
    if (wa.options.hardened)
        return JS_ThrowTypeError(ctx, "'%s' is a frozen global of the hardened profile", webapi_groups[gi].globals[k]);
    JSValue global = JS_GetGlobalObject(ctx);
    const char *name = webapi_groups[gi].globals[k];
    int rc = JS_DefinePropertyValueStr(ctx, global, name, JS_DupValue(ctx, argc ? argv[0] : JS_UNDEFINED), global_flags(name));
    JS_FreeValue(ctx, global);
    return rc < 0 ? JS_EXCEPTION : JS_UNDEFINED;
}

static int install_lazy_globals(JSContext *ctx)
{
    JSValue global = JS_GetGlobalObject(ctx);
    int rc = 0;
    for (uint32_t gi = 0; gi < WEBAPI_GROUP_COUNT && rc == 0; gi++) {
        const struct webapi_group *g = &webapi_groups[gi];
        for (uint32_t k = 0; g->globals[k] && rc == 0; k++) {
            int magic = (int)(gi * 8 + k);
            JSValue getter = JS_NewCFunctionMagic(ctx, (JSCFunctionMagic *)lazy_get, g->globals[k], 0, JS_CFUNC_generic_magic, magic);
            JSValue setter = JS_NewCFunctionMagic(ctx, (JSCFunctionMagic *)lazy_set, g->globals[k], 1, JS_CFUNC_generic_magic, magic);
            JSAtom atom = JS_NewAtom(ctx, g->globals[k]);
            rc = JS_DefineProperty(ctx, global, atom, JS_UNDEFINED, getter, setter,
                                   JS_PROP_HAS_GET | JS_PROP_HAS_SET | JS_PROP_HAS_CONFIGURABLE | JS_PROP_HAS_ENUMERABLE |
                                       (global_flags(g->globals[k]) & (JS_PROP_CONFIGURABLE | JS_PROP_ENUMERABLE))) < 0 ? -1 : 0;
            JS_FreeAtom(ctx, atom);
            JS_FreeValue(ctx, getter);
            JS_FreeValue(ctx, setter);
        }
    }
    JS_FreeValue(ctx, global);
    return rc;
}

/* ---------------------------------------------------------------------------
 * crypto and Math.random */

/* Throws `new DOMException(message, name)`, as Web Crypto does (DOMException is a lazy
 * global: reading it installs its group). */
static JSValue throw_dom_exception(JSContext *ctx, const char *name, const char *message)
{
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue ctor = JS_GetPropertyStr(ctx, global, "DOMException");
    JS_FreeValue(ctx, global);
    if (JS_IsException(ctor))
        return ctor;
    JSValue args[2] = {JS_NewString(ctx, message), JS_NewString(ctx, name)};
    JSValue err = JS_CallConstructor(ctx, ctor, 2, (JSValueConst *)args);
    JS_FreeValue(ctx, args[0]);
    JS_FreeValue(ctx, args[1]);
    JS_FreeValue(ctx, ctor);
    return JS_IsException(err) ? err : JS_Throw(ctx, err);
}

/* Float32Array and Float64Array are refused, as the Web Crypto standard says: their
 * class ids are learnt once from instances (QuickJS exports no typed-array type query). */
static int is_float_array(JSContext *ctx, JSValueConst v)
{
    static JSClassID float_ids[2];
    if (!float_ids[0]) {
        JSTypedArrayEnum types[2] = {JS_TYPED_ARRAY_FLOAT32, JS_TYPED_ARRAY_FLOAT64};
        for (int i = 0; i < 2; i++) {
            JSValue zero = JS_NewInt32(ctx, 0);
            JSValue ta = JS_NewTypedArray(ctx, 1, &zero, types[i]);
            if (JS_IsException(ta)) {
                JS_FreeValue(ctx, JS_GetException(ctx));
                return 1; /* cannot tell: refuse */
            }
            float_ids[i] = JS_GetClassID(ta);
            JS_FreeValue(ctx, ta);
        }
    }
    JSClassID id = JS_GetClassID(v);
    return id == float_ids[0] || id == float_ids[1];
}

static JSValue js_get_random_values(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    JSValueConst arr = argc ? argv[0] : JS_UNDEFINED;
    size_t offset, length, bytes_per;
    JSValue buffer = JS_IsObject(arr) ? JS_GetTypedArrayBuffer(ctx, arr, &offset, &length, &bytes_per) : JS_EXCEPTION;
    if (JS_IsException(buffer)) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        return JS_ThrowTypeError(ctx, "crypto.getRandomValues needs an integer TypedArray");
    }
    if (is_float_array(ctx, arr)) {
        JS_FreeValue(ctx, buffer);
        return throw_dom_exception(ctx, "TypeMismatchError", "crypto.getRandomValues needs an integer TypedArray");
    }
    size_t size;
    uint8_t *data = JS_GetArrayBuffer(ctx, &size, buffer);
    JS_FreeValue(ctx, buffer);
    if (!data && length)
        return JS_EXCEPTION;
    if (length > MAX_RANDOM_BYTES)
        return throw_dom_exception(ctx, "QuotaExceededError",
                                   "crypto.getRandomValues: more than 65536 bytes requested");
    /* Invariant: QuickJS keeps offset + length within the buffer's `size` bytes (the
     * typed array is not detached: JS_GetArrayBuffer returned its data). */
    if (offset > size || length > size - offset)
        return JS_ThrowTypeError(ctx, "crypto.getRandomValues: the array's buffer is detached or resized");
    random_fill(data + offset, length);
    return JS_DupValue(ctx, arr);
}

static JSValue js_random_uuid(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    uint8_t b[16];
    random_fill(b, sizeof b);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    char s[37];
    int j = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            s[j++] = '-';
        s[j++] = hex[b[i] >> 4];
        s[j++] = hex[b[i] & 15];
    }
    s[j] = '\0';
    return JS_NewString(ctx, s);
}

static JSValue js_math_random(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    return JS_NewFloat64(ctx, random_math_double());
}

/* ---------------------------------------------------------------------------
 * Clocks */

static double coarse(double ms)
{
    if (!wa.options.hardened)
        return ms;
    double step = (wa.options.time_resolution_us ? wa.options.time_resolution_us : 1000) / 1000.0;
    return (double)(int64_t)(ms / step) * step;
}

static JSValue js_performance_now(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    return JS_NewFloat64(ctx, coarse((double)(plat_monotonic_ns() - wa.boot_ns) / 1e6));
}

static JSValue js_date_now(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    if (wa.options.fixed_time)
        return JS_NewFloat64(ctx, (double)wa.options.fixed_time_ms);
    return JS_NewFloat64(ctx, coarse((double)(plat_wall_ns() / 1000000)));
}

static int set_method(JSContext *ctx, JSValueConst obj, const char *name, JSCFunction *fn, int length)
{
    return JS_DefinePropertyValueStr(ctx, obj, name, JS_NewCFunction(ctx, fn, name, length),
                                     JS_PROP_WRITABLE | JS_PROP_CONFIGURABLE) < 0 ? -1 : 0;
}

int webapi_context_init(JSContext *ctx)
{
    for (uint32_t gi = 0; gi < WEBAPI_GROUP_COUNT; gi++) {
        wa.loaded[gi] = GROUP_ABSENT;
        for (int k = 0; k < 8; k++)
            wa.cached[gi][k] = JS_UNDEFINED;
    }
    wa.harden_fn = JS_UNDEFINED;
    wa.binary_encode = wa.binary_decode = JS_UNDEFINED;
    memset(&wa.options, 0, sizeof wa.options);
    if (!wa.boot_ns)
        wa.boot_ns = plat_monotonic_ns();
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue math = JS_GetPropertyStr(ctx, global, "Math");
    JSValue crypto = JS_NewObject(ctx);
    JSValue perf = JS_NewObject(ctx);
    int rc = 0;
    if (JS_IsException(math) || JS_IsException(crypto) || JS_IsException(perf))
        rc = -1;
    if (rc == 0)
        rc = set_method(ctx, math, "random", js_math_random, 0);
    if (rc == 0)
        rc = set_method(ctx, crypto, "getRandomValues", js_get_random_values, 1);
    if (rc == 0)
        rc = set_method(ctx, crypto, "randomUUID", js_random_uuid, 0);
    if (rc == 0)
        rc = set_method(ctx, perf, "now", js_performance_now, 0);
    if (rc == 0)
        rc = JS_DefinePropertyValueStr(ctx, global, "crypto", JS_DupValue(ctx, crypto), JS_PROP_WRITABLE | JS_PROP_CONFIGURABLE) < 0 ? -1 : 0;
    if (rc == 0)
        rc = JS_DefinePropertyValueStr(ctx, global, "performance", JS_DupValue(ctx, perf), JS_PROP_WRITABLE | JS_PROP_CONFIGURABLE) < 0 ? -1 : 0;
    if (rc == 0)
        rc = install_lazy_globals(ctx);
    JS_FreeValue(ctx, perf);
    JS_FreeValue(ctx, crypto);
    JS_FreeValue(ctx, math);
    JS_FreeValue(ctx, global);
    return rc;
}

void webapi_context_free(JSContext *ctx)
{
    for (uint32_t gi = 0; gi < WEBAPI_GROUP_COUNT; gi++)
        for (int k = 0; k < 8; k++) {
            JS_FreeValue(ctx, wa.cached[gi][k]);
            wa.cached[gi][k] = JS_UNDEFINED;
        }
    JS_FreeValue(ctx, wa.harden_fn);
    JS_FreeValue(ctx, wa.binary_encode);
    JS_FreeValue(ctx, wa.binary_decode);
    wa.harden_fn = wa.binary_encode = wa.binary_decode = JS_UNDEFINED;
    wa.options.binary = 0;
}

static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

void webapi_options_parse(const uint8_t *bytes, struct webapi_options *out)
{
    uint32_t flags = le32(bytes);
    memset(out, 0, sizeof *out);
    out->hardened = (flags & AIRLOCK_RUNTIME_OPT_HARDENED) != 0;
    out->binary = (flags & AIRLOCK_RUNTIME_OPT_BINARY) != 0;
    out->time_resolution_us = le32(bytes + 4);
    out->fixed_random = (flags & AIRLOCK_RUNTIME_OPT_FIXED_RANDOM) != 0;
    out->random_seed = le64(bytes + 8);
    out->fixed_time = out->hardened && (flags & AIRLOCK_RUNTIME_OPT_FIXED_TIME) != 0;
    out->fixed_time_ms = (int64_t)le64(bytes + 16);
}

int webapi_configure(JSContext *ctx, const struct webapi_options *options)
{
    wa.options = *options;
    random_set_deterministic(options->fixed_random, options->random_seed);
    if (options->binary) {
        /* Taken before the hardened profile freezes JSON: binary.js keeps its own references. */
        JSValue exports = group_evaluate(ctx, group_named(BINARY_GROUP_NAME));
        if (JS_IsException(exports))
            return -1;
        wa.binary_encode = JS_GetPropertyStr(ctx, exports, "encode");
        wa.binary_decode = JS_GetPropertyStr(ctx, exports, "decode");
        JS_FreeValue(ctx, exports);
        if (JS_IsException(wa.binary_encode) || JS_IsException(wa.binary_decode))
            return -1;
    }
    if (!options->hardened)
        return 0;
    const struct webapi_group *g = group_named(HARDEN_GROUP_NAME);
    JSValue exports = group_evaluate(ctx, g);
    if (JS_IsException(exports))
        return -1;
    JSValue lockdown = JS_GetPropertyStr(ctx, exports, "lockdown");
    JS_FreeValue(ctx, exports);
    if (JS_IsException(lockdown))
        return -1;
    JSValue now = JS_NewCFunction(ctx, js_date_now, "now", 0);
    JSValue result = JS_Call(ctx, lockdown, JS_UNDEFINED, 1, (JSValueConst *)&now);
    JS_FreeValue(ctx, now);
    JS_FreeValue(ctx, lockdown);
    if (JS_IsException(result))
        return -1;
    wa.harden_fn = JS_GetPropertyStr(ctx, result, "harden");
    JS_FreeValue(ctx, result);
    return JS_IsException(wa.harden_fn) ? -1 : 0;
}

/* ---------------------------------------------------------------------------
 * Values across the boundary */

int webapi_encode(JSContext *ctx, JSValueConst value, struct webapi_encoded *out)
{
    memset(out, 0, sizeof *out);
    out->json = JS_UNDEFINED;
    out->buffers = JS_UNDEFINED;
    uint32_t nbuf = 0;
    if (wa.options.binary) {
        JSValue pair = JS_Call(ctx, wa.binary_encode, JS_UNDEFINED, 1, &value);
        if (JS_IsException(pair))
            return -1;
        out->json = JS_GetPropertyUint32(ctx, pair, 0);
        out->buffers = JS_GetPropertyUint32(ctx, pair, 1);
        JS_FreeValue(ctx, pair);
        JSValue length = JS_IsException(out->buffers) ? JS_EXCEPTION : JS_GetPropertyStr(ctx, out->buffers, "length");
        uint32_t len = 0;
        if (JS_IsException(out->json) || JS_IsException(length) || JS_ToUint32(ctx, &len, length) < 0) {
            JS_FreeValue(ctx, length);
            webapi_encoded_free(ctx, out);
            return -1;
        }
        JS_FreeValue(ctx, length);
        nbuf = len; /* binary.js made the array: at most one entry per placeholder in the JSON */
    } else {
        out->json = JS_JSONStringify(ctx, value, JS_UNDEFINED, JS_UNDEFINED);
        if (JS_IsException(out->json))
            return -1;
    }
    out->count = 1 + nbuf;
    out->fields = js_mallocz(ctx, out->count * sizeof *out->fields);
    if (!out->fields) {
        webapi_encoded_free(ctx, out);
        return -1;
    }
    if (!JS_IsUndefined(out->json)) {
        size_t len;
        out->text = JS_ToCStringLen(ctx, &len, out->json);
        if (!out->text) {
            webapi_encoded_free(ctx, out);
            return -1;
        }
        out->fields[0] = (struct field){(const uint8_t *)out->text, (uint32_t)len};
    }
    for (uint32_t i = 0; i < nbuf; i++) {
        JSValue ab = JS_GetPropertyUint32(ctx, out->buffers, i);
        size_t size;
        uint8_t *data = JS_GetArrayBuffer(ctx, &size, ab);
        /* Invariant: out->buffers holds ab, so its data stays valid until webapi_encoded_free. */
        JS_FreeValue(ctx, ab);
        if (!data && size) {
            webapi_encoded_free(ctx, out);
            return -1;
        }
        if (size > UINT32_MAX) {
            webapi_encoded_free(ctx, out);
            JS_ThrowRangeError(ctx, "a binary value of %zu bytes cannot cross the boundary", size);
            return -1;
        }
        static const uint8_t empty[1];
        out->fields[1 + i] = (struct field){data ? data : empty, (uint32_t)size};
    }
    return 0;
}

void webapi_encoded_free(JSContext *ctx, struct webapi_encoded *e)
{
    if (e->text)
        JS_FreeCString(ctx, e->text);
    js_free(ctx, e->fields);
    JS_FreeValue(ctx, e->json);
    JS_FreeValue(ctx, e->buffers);
    memset(e, 0, sizeof *e);
    e->json = e->buffers = JS_UNDEFINED;
}

JSValue webapi_decode(JSContext *ctx, const struct msg_view *m, uint32_t json_index, const char *filename)
{
    struct field f;
    if (msg_field(m, json_index, &f) < 0)
        return JS_ThrowInternalError(ctx, "no JSON field to decode");
    /* JS_ParseJSON needs a NUL-terminated copy; the JS heap accounts for it. */
    char *text = js_malloc(ctx, (size_t)f.len + 1);
    if (!text)
        return JS_EXCEPTION;
    memcpy(text, f.data, f.len);
    text[f.len] = '\0';
    JSValue result;
    if (!wa.options.binary) {
        result = JS_ParseJSON(ctx, text, f.len, filename);
        js_free(ctx, text);
        return result;
    }
    JSValue json = JS_NewStringLen(ctx, text, f.len);
    js_free(ctx, text);
    JSValue buffers = JS_NewArray(ctx);
    if (JS_IsException(json) || JS_IsException(buffers)) {
        JS_FreeValue(ctx, json);
        JS_FreeValue(ctx, buffers);
        return JS_EXCEPTION;
    }
    for (uint32_t i = json_index + 1; i < m->count; i++) {
        struct field b;
        msg_field(m, i, &b); /* i < count: cannot fail */
        JSValue ab = JS_NewArrayBufferCopy(ctx, b.data, b.len);
        if (JS_IsException(ab) || JS_SetPropertyUint32(ctx, buffers, i - json_index - 1, ab) < 0) {
            JS_FreeValue(ctx, json);
            JS_FreeValue(ctx, buffers);
            return JS_EXCEPTION;
        }
    }
    JSValue args[2] = {json, buffers};
    result = JS_Call(ctx, wa.binary_decode, JS_UNDEFINED, 2, (JSValueConst *)args);
    JS_FreeValue(ctx, json);
    JS_FreeValue(ctx, buffers);
    return result;
}
