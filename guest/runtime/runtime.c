/* runtime.c — the guest runtime: boots QuickJS over the guest heap, and handles every
 * request kind of abi.h (LOAD_RUNTIME, LOAD, CALL, UNLOAD, GC, CHUNK), including the
 * host-call bridge (host:<module> ES modules) and the user-module loader. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "crypto.h"
#include "eventloop.h"
#include "random.h"
#include "runtime.h"
#include "webapi.h"

/* QuickJS's own per-allocation bookkeeping estimate (its MALLOC_OVERHEAD). */
#define JS_MALLOC_OVERHEAD 8
#define HANDLER_EXPORT "__airlock_handler__"
static const char handler_suffix[] =
    "\n;export const " HANDLER_EXPORT " = typeof handler === 'function' ? handler : undefined;";

struct host_function {
    char *module;   /* NUL-terminated copies */
    char *function;
};

struct user_module {
    char *specifier; /* "<namespace>:<name>" */
    char *source;    /* NUL-terminated, as JS_Eval requires */
    size_t source_len;
    uint8_t *bytecode; /* LOAD_FLAG_BYTECODE: read instead of compiling source; NULL = none */
    size_t bytecode_len;
};

struct handler {
    char *name;
    JSValue fn;
};

static struct {
    JSRuntime *rt;
    JSContext *ctx;
    struct host_function *host_fns;
    uint32_t host_fn_count;
    struct user_module *modules;
    uint32_t module_count;
    struct handler *handlers;
    uint32_t handler_count;
    uint8_t *chunk_buf; /* CHUNK staging */
    size_t chunk_len;
    uint64_t boot_ns;
    /* No JS has run in ctx since it was made: LOAD_RUNTIME may keep it, since host
     * modules are resolved lazily by the module loader, not installed in the context. */
    int ctx_pristine;
    /* A COMPILE is in progress: every import resolves to an empty stand-in module. */
    int compiling;
    /* Per-request conditions. */
    int oom;
    int interrupted;
    /* The post-call GC the last request asked for, run once its response is on its way
     * (airlock_runtime_after): GC_NONE, GC_FULL or GC_IF_GROWN. */
    int gc_pending;
    /* LOAD_RUNTIME's options, applied again to the fresh context of an UNLOAD. */
    struct webapi_options options;
    /* Bytes QuickJS holds (its malloc_size, tracked by the allocator hooks below) and
     * what it held after the last collection we saw: the post-call GC policy. */
    size_t js_bytes;
    size_t gc_baseline;
} rt_state;

enum { GC_NONE, GC_FULL, GC_IF_GROWN };

/* Post-call GC policy (the default of a CALL, AIRLOCK_CALL_FLAG_GC_AUTO): a full
 * collection costs what the live heap holds (21 us empty, 520 us with 10,000 objects),
 * so it runs only once the JS heap has grown since the last collection by a quarter of
 * what survived it, and by at least GC_MIN_GROWTH. Each collection then frees (or
 * finds newly live) a share of the heap proportional to its cost, and between calls,
 * before QuickJS's own allocation-time trigger (at half the live heap) fires in the
 * middle of one. Garbage stays bounded either way. */
#define GC_MIN_GROWTH ((size_t)256 * 1024)
#define GC_GROWTH_SHARE 4

/* ---------------------------------------------------------------------------
 * Small helpers */

static char *dup_bytes(const void *p, size_t n)
{
    char *s = airlock_malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static char *dup_field(const struct field *f) { return dup_bytes(f->data, f->len); }

struct out_buf runtime_output(void)
{
    struct airlock_control *c = plat_control();
    uint64_t cap = c->output_size > UINT32_MAX ? UINT32_MAX : c->output_size;
    /* Invariant: the host mapped [output_addr, +output_size) for the guest. */
    struct out_buf o = {(uint8_t *)(uintptr_t)c->output_addr, (uint32_t)cap, 0};
    return o;
}

void runtime_publish(const struct out_buf *out)
{
    struct airlock_control *c = plat_control();
    c->response_len = out->len;
    c->heap_high_water = airlock_alloc_high_water();
    c->heap_in_use = airlock_alloc_in_use();
}

/* Writes `kind`/`status` with the given text fields as the only message, shortening
 * the last field if needed so that something always reaches the host. */
static void write_alone(uint32_t kind, uint32_t status, const char *const *fields, unsigned n)
{
    struct out_buf out = runtime_output();
    struct msg_writer w;
    msg_begin(&w, &out, kind, status);
    for (unsigned i = 0; i < n; i++)
        msg_add_str(&w, fields[i]);
    if (msg_end(&w) < 0) {
        out.len = 0;
        msg_begin(&w, &out, kind, status);
        for (unsigned i = 0; i < n; i++) {
            size_t room = out.cap - out.len;
            size_t len = strlen(fields[i]);
            size_t keep = room > AIRLOCK_FIELD_HEADER_SIZE ? room - AIRLOCK_FIELD_HEADER_SIZE : 0;
            msg_add(&w, fields[i], len < keep ? len : keep);
        }
        msg_end(&w);
    }
    runtime_publish(&out);
}

void airlock_write_abort(const char *msg)
{
    /* After the console lines already in the buffer, so the host can still deliver
     * them with the abort; the message is cut to the room they leave. Only when not
     * even an empty ABORT fits there does it go alone, at the start. */
    struct out_buf out = runtime_output();
    out.len = (uint32_t)console_written_bytes();
    size_t room = out.cap - out.len;
    if (room >= AIRLOCK_MSG_HEADER_SIZE + AIRLOCK_FIELD_HEADER_SIZE) {
        size_t len = strlen(msg);
        size_t keep = room - AIRLOCK_MSG_HEADER_SIZE - AIRLOCK_FIELD_HEADER_SIZE;
        struct msg_writer w;
        msg_begin(&w, &out, AIRLOCK_MSG_ABORT, 0);
        msg_add(&w, msg, len < keep ? len : keep);
        if (msg_end(&w) == 0) {
            runtime_publish(&out);
            return;
        }
    }
    const char *fields[1] = {msg};
    write_alone(AIRLOCK_MSG_ABORT, 0, fields, 1);
}

/* The final response: pending console, the dropped-console notice, then RESULT with
 * `status` and fields. When that does not fit, RESULT TOO_LARGE alone. */
static void respond(uint32_t status, const struct field *fields, unsigned n)
{
    struct out_buf out = runtime_output();
    size_t console_bytes = console_pending_bytes();
    int ok = console_write_pending(&out) == 0 && console_write_dropped_notice(&out) == 0;
    if (ok) {
        struct msg_writer w;
        msg_begin(&w, &out, AIRLOCK_MSG_RESULT, status);
        for (unsigned i = 0; i < n; i++)
            msg_add(&w, fields[i].data, fields[i].len);
        ok = msg_end(&w) == 0;
    }
    if (ok) {
        console_clear_pending(); /* before publishing: it empties response_len */
        runtime_publish(&out);
        return;
    }
    size_t lens[8];
    for (unsigned i = 0; i < n && i < 8; i++)
        lens[i] = fields[i].len;
    char text[200];
    snprintf(text, sizeof text,
             "response is %zu bytes (%zu of them console output) but the output buffer holds %u bytes",
             msg_size(lens, n < 8 ? n : 8) + console_bytes, console_bytes, out.cap);
    console_clear_pending();
    const char *f[1] = {text};
    write_alone(AIRLOCK_MSG_RESULT, AIRLOCK_STATUS_TOO_LARGE, f, 1);
}

static void respond_text(uint32_t status, const char *text)
{
    struct field f = {(const uint8_t *)text, (uint32_t)strlen(text)};
    respond(status, &f, 1);
}

static void respond_fmt(uint32_t status, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    respond_text(status, text);
}

static void respond_ok(void) { respond(AIRLOCK_STATUS_OK, NULL, 0); }

/* ---------------------------------------------------------------------------
 * QuickJS glue: allocator, interrupts */

static void *js_heap_malloc(JSMallocState *s, size_t size)
{
    void *p = airlock_malloc(size);
    if (!p) {
        rt_state.oom = 1;
        return NULL;
    }
    s->malloc_count++;
    s->malloc_size += airlock_usable_size(p) + JS_MALLOC_OVERHEAD;
    rt_state.js_bytes = s->malloc_size;
    return p;
}

static void js_heap_free(JSMallocState *s, void *p)
{
    if (!p)
        return;
    s->malloc_count--;
    s->malloc_size -= airlock_usable_size(p) + JS_MALLOC_OVERHEAD;
    rt_state.js_bytes = s->malloc_size;
    airlock_free(p);
}

static void *js_heap_realloc(JSMallocState *s, void *p, size_t size)
{
    if (!p)
        return size ? js_heap_malloc(s, size) : NULL;
    size_t old = airlock_usable_size(p);
    if (size == 0) {
        js_heap_free(s, p);
        return NULL;
    }
    void *q = airlock_realloc(p, size);
    if (!q) {
        rt_state.oom = 1;
        return NULL;
    }
    s->malloc_size += airlock_usable_size(q);
    s->malloc_size -= old;
    rt_state.js_bytes = s->malloc_size;
    return q;
}

static size_t js_heap_usable(const void *p) { return airlock_usable_size(p); }

static const JSMallocFunctions js_heap_functions = {
    js_heap_malloc,
    js_heap_free,
    js_heap_realloc,
    js_heap_usable,
};

static int js_interrupt(JSRuntime *rt, void *opaque)
{
    (void)rt;
    (void)opaque;
    if (plat_interrupt_requested()) {
        rt_state.interrupted = 1;
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Exceptions */

struct exception_info {
    const char *name;    /* JS C strings, static text or text_buf */
    const char *message;
    const char *stack;
    int name_owned, message_owned, stack_owned;
    char text_buf[512]; /* a thrown non-Error object, as JSON, cut to fit */
};

static const char *prop_cstring(JSContext *ctx, JSValueConst obj, const char *prop, int *owned)
{
    JSValue v = JS_GetPropertyStr(ctx, obj, prop);
    const char *s = NULL;
    if (JS_IsException(v)) {
        JS_FreeValue(ctx, JS_GetException(ctx));
    } else if (!JS_IsUndefined(v) && !JS_IsNull(v)) {
        s = JS_ToCString(ctx, v);
        if (!s)
            JS_FreeValue(ctx, JS_GetException(ctx));
    }
    JS_FreeValue(ctx, v);
    *owned = s != NULL;
    return s ? s : "";
}

/* `throw { code: 42 }` carries no message: say what was thrown, as JSON (cut to the
 * buffer), so the host's error is still useful. */
static void describe_thrown_object(JSContext *ctx, JSValueConst exc, struct exception_info *info)
{
    JSValue json = JS_JSONStringify(ctx, exc, JS_UNDEFINED, JS_UNDEFINED);
    size_t len = 0;
    const char *text = JS_IsException(json) || JS_IsUndefined(json) ? NULL : JS_ToCStringLen(ctx, &len, json);
    if (JS_IsException(json) || !text)
        JS_FreeValue(ctx, JS_GetException(ctx));
    JS_FreeValue(ctx, json);
    const char *what = text ? text : "an object that cannot be shown as JSON";
    size_t room = sizeof info->text_buf - sizeof "thrown value: ..." ;
    size_t n = text ? len : strlen(what);
    int cut = n > room;
    if (cut) {
        n = room;
        while (n > 0 && ((unsigned char)what[n] & 0xc0) == 0x80)
            n--; /* end on a UTF-8 character boundary */
    }
    snprintf(info->text_buf, sizeof info->text_buf, "thrown value: %.*s%s", (int)n, what, cut ? "..." : "");
    if (text)
        JS_FreeCString(ctx, text);
    info->message = info->text_buf;
}

static void exception_describe(JSContext *ctx, JSValueConst exc, struct exception_info *info)
{
    memset(info, 0, sizeof *info);
    if (JS_IsObject(exc)) {
        info->name = prop_cstring(ctx, exc, "name", &info->name_owned);
        info->message = prop_cstring(ctx, exc, "message", &info->message_owned);
        info->stack = prop_cstring(ctx, exc, "stack", &info->stack_owned);
        if (!info->name_owned && JS_IsError(ctx, exc))
            info->name = "Error";
        if (!info->message_owned && !JS_IsError(ctx, exc))
            describe_thrown_object(ctx, exc, info);
        return;
    }
    info->name = "";
    info->stack = "";
    info->message = JS_ToCString(ctx, exc);
    info->message_owned = info->message != NULL;
    if (!info->message) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        info->message = "[unprintable thrown value]";
    }
}

static void exception_release(JSContext *ctx, struct exception_info *info)
{
    if (info->name_owned)
        JS_FreeCString(ctx, info->name);
    if (info->message_owned)
        JS_FreeCString(ctx, info->message);
    if (info->stack_owned)
        JS_FreeCString(ctx, info->stack);
}

static int is_stack_overflow(const struct exception_info *info)
{
    return strcmp(info->name, "InternalError") == 0 && strcmp(info->message, "stack overflow") == 0;
}

/* Copies the location of the first stack frame ("handler:x:3:14") into buf. */
static void first_frame_location(const char *stack, char *buf, size_t size)
{
    buf[0] = '\0';
    const char *at = strstr(stack, "at ");
    if (!at)
        return;
    at += 3;
    const char *eol = strchr(at, '\n');
    size_t n = eol ? (size_t)(eol - at) : strlen(at);
    const char *open = memchr(at, '(', n);
    if (open && at[n - 1] == ')') {
        n = (size_t)(at + n - 1 - (open + 1));
        at = open + 1;
    }
    if (n >= size)
        n = size - 1;
    memcpy(buf, at, n);
    buf[n] = '\0';
}

/* ---------------------------------------------------------------------------
 * Host functions: host:<module> ES modules */

static struct host_function *host_fn_lookup(uint32_t index)
{
    return index < rt_state.host_fn_count ? &rt_state.host_fns[index] : NULL;
}

static JSValue throw_host_error(JSContext *ctx, const struct field *msg)
{
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue error_ctor = JS_GetPropertyStr(ctx, global, "Error");
    JS_FreeValue(ctx, global);
    JSValue text = msg ? JS_NewStringLen(ctx, (const char *)msg->data, msg->len) : JS_NewString(ctx, "host function failed");
    JSValue err = JS_CallConstructor(ctx, error_ctor, 1, (JSValueConst *)&text);
    JS_FreeValue(ctx, text);
    JS_FreeValue(ctx, error_ctor);
    if (JS_IsException(err))
        return err;
    JS_DefinePropertyValueStr(ctx, err, "name", JS_NewString(ctx, "HostFunctionError"),
                              JS_PROP_WRITABLE | JS_PROP_CONFIGURABLE);
    return JS_Throw(ctx, err);
}

/* The arguments as a fresh array (the form both host-call bridges send). */
static JSValue args_array(JSContext *ctx, int argc, JSValueConst *argv)
{
    JSValue args = JS_NewArray(ctx);
    if (JS_IsException(args))
        return args;
    for (int i = 0; i < argc; i++) {
        if (JS_SetPropertyUint32(ctx, args, (uint32_t)i, JS_DupValue(ctx, argv[i])) < 0) {
            JS_FreeValue(ctx, args);
            return JS_EXCEPTION;
        }
    }
    return args;
}

static JSValue host_call(JSContext *ctx, const char *module, const char *function, JSValueConst args, int sleep)
{
    struct webapi_encoded enc;
    if (webapi_encode(ctx, args, &enc) < 0) {
        JSValue exc = JS_GetException(ctx);
        if (rt_state.interrupted || rt_state.oom)
            return JS_Throw(ctx, exc);
        struct exception_info info;
        exception_describe(ctx, exc, &info);
        JSValue r = JS_ThrowTypeError(ctx, "arguments of host function %s.%s are not JSON-serializable: %s",
                                      module, function, info.message);
        exception_release(ctx, &info);
        JS_FreeValue(ctx, exc);
        return r;
    }
    size_t json_len = enc.fields[0].len;

    struct out_buf out = runtime_output();
    int fits = console_write_pending(&out) == 0;
    if (fits) {
        struct msg_writer w;
        msg_begin(&w, &out, AIRLOCK_MSG_HOST_CALL, 0);
        msg_add_str(&w, module);
        msg_add_str(&w, function);
        for (uint32_t i = 0; i < enc.count; i++)
            msg_add(&w, enc.fields[i].data, enc.fields[i].len);
        fits = msg_end(&w) == 0;
    }
    webapi_encoded_free(ctx, &enc);
    if (!fits)
        return JS_ThrowRangeError(ctx,
                                  "arguments of host function %s.%s (%zu bytes of JSON) with %zu bytes of console "
                                  "output do not fit the %u-byte output buffer",
                                  module, function, json_len, console_pending_bytes(), out.cap);
    runtime_publish(&out);
    if (sleep)
        plat_exit_sleep();
    else
        plat_exit(AIRLOCK_EXIT_HOST_CALL);
    console_clear_pending();

    struct airlock_control *c = plat_control();
    struct msg_view reply;
    const char *why = NULL;
    if (c->request_len > c->input_size) {
        why = "HOST_RETURN is larger than the input buffer";
    } else if (msg_parse((const uint8_t *)(uintptr_t)c->input_addr, c->request_len, &reply, &why) == 0 &&
               reply.kind != AIRLOCK_MSG_HOST_RETURN) {
        why = "expected a HOST_RETURN message";
    }
    if (why)
        return JS_ThrowInternalError(ctx, "host call %s.%s: malformed reply: %s", module, function, why);
    struct field f;
    int has_field = msg_field(&reply, 0, &f) == 0;
    if (reply.status == AIRLOCK_STATUS_HOST_ERROR)
        return throw_host_error(ctx, has_field ? &f : NULL);
    if (reply.status != AIRLOCK_STATUS_OK)
        return JS_ThrowInternalError(ctx, "host call %s.%s: malformed reply: unknown status %u", module,
                                     function, reply.status);
    if (!has_field)
        return JS_UNDEFINED;
    return webapi_decode(ctx, &reply, 0, "<host result>");
}

JSValue runtime_host_call(JSContext *ctx, const char *module, const char *function, JSValueConst args)
{
    return host_call(ctx, module, function, args, 0);
}

JSValue runtime_sleep_call(JSContext *ctx, JSValueConst args) { return host_call(ctx, "airlock:loop", "sleep", args, 1); }

/* The host function a bridge was made for, with its arguments as a fresh array:
 * NULL with an exception pending (in *args) when either fails. */
static struct host_function *host_fn_call_args(JSContext *ctx, int magic, int argc, JSValueConst *argv, JSValue *args)
{
    struct host_function *hf = host_fn_lookup((uint32_t)magic);
    if (!hf) {
        *args = JS_ThrowInternalError(ctx, "host function table changed under a live module");
        return NULL;
    }
    *args = args_array(ctx, argc, argv);
    return JS_IsException(*args) ? NULL : hf;
}

static JSValue js_host_call(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv, int magic)
{
    (void)this_val;
    JSValue args;
    struct host_function *hf = host_fn_call_args(ctx, magic, argc, argv, &args);
    if (!hf)
        return args;
    JSValue result = runtime_host_call(ctx, hf->module, hf->function, args);
    JS_FreeValue(ctx, args);
    return result;
}

/* The non-blocking form (`host:<m>?async`): the event loop starts the call and
 * returns its promise. */
static JSValue js_host_call_async(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv, int magic)
{
    (void)this_val;
    JSValue args;
    struct host_function *hf = host_fn_call_args(ctx, magic, argc, argv, &args);
    if (!hf)
        return args;
    JSValue promise = eventloop_start_host_call(ctx, hf->module, hf->function, args);
    JS_FreeValue(ctx, args);
    return promise;
}

/* "host:<m>" or "host:<m>?async": the length of <m> and whether it is the async form. */
static size_t host_module_base(const char *module, int *is_async)
{
    size_t len = strlen(module);
    size_t suffix = sizeof EVENTLOOP_ASYNC_SUFFIX - 1;
    *is_async = len > suffix && strcmp(module + len - suffix, EVENTLOOP_ASYNC_SUFFIX) == 0;
    return *is_async ? len - suffix : len;
}

static int host_module_matches(const struct host_function *hf, const char *module, size_t len)
{
    return strncmp(hf->module, module, len) == 0 && hf->module[len] == '\0';
}

static int host_module_init(JSContext *ctx, JSModuleDef *m)
{
    JSAtom name_atom = JS_GetModuleName(ctx, m);
    const char *name = JS_AtomToCString(ctx, name_atom);
    JS_FreeAtom(ctx, name_atom);
    if (!name)
        return -1;
    const char *module = name + 5; /* after "host:", checked by the loader */
    int is_async;
    size_t module_len = host_module_base(module, &is_async);
    int rc = 0;
    for (uint32_t i = 0; i < rt_state.host_fn_count && rc == 0; i++) {
        struct host_function *hf = &rt_state.host_fns[i];
        if (!host_module_matches(hf, module, module_len))
            continue;
        JSValue fn = JS_NewCFunctionMagic(ctx, is_async ? js_host_call_async : js_host_call, hf->function, 0,
                                          JS_CFUNC_generic_magic, (int)i);
        if (JS_IsException(fn) || JS_SetModuleExport(ctx, m, hf->function, fn) < 0)
            rc = -1;
    }
    JS_FreeCString(ctx, name);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Module loader */

static char *module_normalize(JSContext *ctx, const char *base, const char *name, void *opaque)
{
    (void)base;
    (void)opaque;
    /* Every specifier is absolute ("host:m", "<ns>:<name>", a built-in's bare name):
     * no path resolution. */
    return js_strdup(ctx, name);
}

/* A module from the bytecode LOAD_FLAG_BYTECODE carried: the host sends only bytes that
 * COMPILE produced in a guest that ran no tenant code (QuickJS's bytecode reader trusts
 * its input), so this is the only JS_ReadObject in the runtime and it reads only the
 * request's own field. Anything but a module is refused as a bad request would be. */
static JSValue read_module_bytecode(JSContext *ctx, const uint8_t *bytes, size_t len)
{
    JSValue v = JS_ReadObject(ctx, bytes, len, JS_READ_OBJ_BYTECODE);
    if (JS_IsException(v) || JS_VALUE_GET_TAG(v) == JS_TAG_MODULE)
        return v;
    JS_FreeValue(ctx, v);
    return JS_ThrowTypeError(ctx, "cached bytecode is not a module");
}

static int stand_in_module_init(JSContext *ctx, JSModuleDef *m)
{
    (void)ctx;
    (void)m;
    return 0;
}

static JSModuleDef *module_load(JSContext *ctx, const char *name, void *opaque)
{
    (void)opaque;
    /* QuickJS resolves a module's imports while compiling it, but the bytecode names its
     * imports only by specifier: COMPILE needs no real module behind them, and loads
     * none (a sandbox resolves them again when it reads the bytecode). */
    if (rt_state.compiling)
        return JS_NewCModule(ctx, name, stand_in_module_init);
    /* Built-in modules: bare names, which no user module can take (those have a ns:). */
    if (strcmp(name, CRYPTO_MODULE_NAME) == 0)
        return crypto_module_new(ctx, name);
    if (strncmp(name, "host:", 5) == 0) {
        const char *module = name + 5;
        int is_async;
        size_t module_len = host_module_base(module, &is_async);
        JSModuleDef *m = NULL;
        for (uint32_t i = 0; i < rt_state.host_fn_count; i++) {
            struct host_function *hf = &rt_state.host_fns[i];
            if (!host_module_matches(hf, module, module_len))
                continue;
            if (!m) {
                m = JS_NewCModule(ctx, name, host_module_init);
                if (!m)
                    return NULL;
            }
            if (JS_AddModuleExport(ctx, m, hf->function) < 0)
                return NULL;
        }
        if (!m)
            JS_ThrowReferenceError(ctx, "host module '%s' is not registered", name);
        return m;
    }
    for (uint32_t i = 0; i < rt_state.module_count; i++) {
        struct user_module *um = &rt_state.modules[i];
        if (strcmp(um->specifier, name) != 0)
            continue;
        JSValue fn = um->bytecode ? read_module_bytecode(ctx, um->bytecode, um->bytecode_len)
                                  : JS_Eval(ctx, um->source, um->source_len, name, JS_EVAL_TYPE_MODULE | JS_EVAL_FLAG_COMPILE_ONLY);
        if (JS_IsException(fn))
            return NULL;
        /* Invariant: a COMPILE_ONLY module eval yields a JS_TAG_MODULE value whose
         * module stays owned by the context after the value is released. */
        JSModuleDef *m = JS_VALUE_GET_PTR(fn);
        JS_FreeValue(ctx, fn);
        return m;
    }
    JS_ThrowReferenceError(ctx, "module '%s' is not registered", name);
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Context lifecycle */

static JSContext *context_create(void)
{
    JSContext *ctx = JS_NewContext(rt_state.rt);
    if (!ctx)
        return NULL;
    console_install(ctx);
    if (webapi_context_init(ctx) < 0 || eventloop_install(ctx) < 0) {
        webapi_context_free(ctx);
        JS_FreeContext(ctx);
        return NULL;
    }
    JSValue global = JS_GetGlobalObject(ctx);
    /* One thread per guest, so shared memory has no use; and the WebAssembly build of
     * QuickJS has no Atomics (wasi-libc has no threads). Both tiers offer neither, so
     * a handler sees the same globals wherever it runs. */
    static const char *const unshared[] = {"SharedArrayBuffer", "Atomics"};
    for (size_t i = 0; i < sizeof unshared / sizeof unshared[0]; i++) {
        JSAtom atom = JS_NewAtom(ctx, unshared[i]);
        JS_DeleteProperty(ctx, global, atom, 0);
        JS_FreeAtom(ctx, atom);
    }
    JS_FreeValue(ctx, global);
    return ctx;
}

static void handlers_clear(void)
{
    for (uint32_t i = 0; i < rt_state.handler_count; i++) {
        JS_FreeValue(rt_state.ctx, rt_state.handlers[i].fn);
        airlock_free(rt_state.handlers[i].name);
    }
    airlock_free(rt_state.handlers);
    rt_state.handlers = NULL;
    rt_state.handler_count = 0;
}

static void modules_clear(void)
{
    for (uint32_t i = 0; i < rt_state.module_count; i++) {
        airlock_free(rt_state.modules[i].specifier);
        airlock_free(rt_state.modules[i].source);
        airlock_free(rt_state.modules[i].bytecode);
    }
    airlock_free(rt_state.modules);
    rt_state.modules = NULL;
    rt_state.module_count = 0;
}

static void host_fns_clear(void)
{
    for (uint32_t i = 0; i < rt_state.host_fn_count; i++) {
        airlock_free(rt_state.host_fns[i].module);
        airlock_free(rt_state.host_fns[i].function);
    }
    airlock_free(rt_state.host_fns);
    rt_state.host_fns = NULL;
    rt_state.host_fn_count = 0;
}

/* A full collection; what survives is the baseline of the post-call GC policy, and
 * QuickJS's own trigger is moved as its collections move it (1.5x what survived), so
 * it does not fire again at once on a heap that grew while it was not looking. */
static void collect_garbage(void)
{
    JS_RunGC(rt_state.rt);
    rt_state.gc_baseline = rt_state.js_bytes;
    JS_SetGCThreshold(rt_state.rt, rt_state.js_bytes + (rt_state.js_bytes >> 1));
}

/* Drops handlers and user modules and starts a fresh context. 0, or -1 on OOM. */
static int context_reset(void)
{
    handlers_clear();
    modules_clear();
    if (rt_state.ctx) {
        eventloop_release(rt_state.ctx);
        webapi_context_free(rt_state.ctx);
        JS_FreeContext(rt_state.ctx);
    }
    collect_garbage();
    rt_state.ctx = context_create();
    rt_state.ctx_pristine = rt_state.ctx != NULL;
    return rt_state.ctx ? 0 : -1;
}

/* Applies LOAD_RUNTIME's options to a fresh context. The hardened profile and binary data
 * run code in it, after which it is no longer pristine. 0, or -1 with an exception pending. */
static int context_configure(void)
{
    rt_state.ctx_pristine = !rt_state.options.hardened && !rt_state.options.binary;
    return webapi_configure(rt_state.ctx, &rt_state.options);
}

/* ---------------------------------------------------------------------------
 * Jobs and promises */

/* Runs pending jobs until `promise` (if any) settles or no job is left.
 * Stops early when the request was interrupted. */
static void run_jobs(JSValueConst promise)
{
    JSContext *job_ctx;
    for (;;) {
        if (!JS_IsUndefined(promise) && JS_PromiseState(rt_state.ctx, promise) != JS_PROMISE_PENDING)
            return;
        int r = JS_ExecutePendingJob(rt_state.rt, &job_ctx);
        /* No job left: a pending promise may still wait on timers or async host calls. */
        if (r == 0 && (JS_IsUndefined(promise) || eventloop_turn(rt_state.ctx) <= 0))
            return;
        if (r < 0)
            JS_FreeValue(job_ctx, JS_GetException(job_ctx));
        if (rt_state.interrupted)
            return;
    }
}

static void drain_jobs(void) { run_jobs(JS_UNDEFINED); }

/* ---------------------------------------------------------------------------
 * Requests */

static void handle_message(const uint8_t *buf, size_t len);
static void respond_exception(JSValue exc);

static void handle_load_runtime(const struct msg_view *request)
{
    struct msg_view view = *request;
    const struct msg_view *m = &view;
    struct webapi_options options = {0};
    if (request->status & AIRLOCK_RUNTIME_FLAG_OPTIONS) {
        struct field f;
        if (view.count == 0 || msg_field(&view, view.count - 1, &f) < 0 || f.len != AIRLOCK_RUNTIME_OPTIONS_SIZE) {
            respond_text(AIRLOCK_STATUS_BAD_REQUEST, "LOAD_RUNTIME options field has the wrong size");
            return;
        }
        webapi_options_parse(f.data, &options);
        view.count--;
    }
    if (m->count % 2 != 0) {
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, "LOAD_RUNTIME needs (module, function) pairs");
        return;
    }
    struct field_iter it;
    struct field f;
    field_iter_init(&it, m);
    while (field_next(&it, &f) == 0) {
        if (f.len == 0 || memchr(f.data, '\0', f.len)) {
            respond_text(AIRLOCK_STATUS_BAD_REQUEST, "LOAD_RUNTIME names must be non-empty and contain no NUL");
            return;
        }
    }
    handlers_clear();
    modules_clear();
    host_fns_clear();
    uint32_t n = m->count / 2;
    if (n) {
        rt_state.host_fns = airlock_calloc(n, sizeof *rt_state.host_fns);
        if (!rt_state.host_fns) {
            respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted registering host functions");
            return;
        }
    }
    field_iter_init(&it, m);
    for (uint32_t i = 0; i < n; i++) {
        struct field mod, fn;
        field_next(&it, &mod);
        field_next(&it, &fn);
        rt_state.host_fns[i].module = dup_field(&mod);
        rt_state.host_fns[i].function = dup_field(&fn);
        rt_state.host_fn_count = i + 1;
        if (!rt_state.host_fns[i].module || !rt_state.host_fns[i].function) {
            host_fns_clear();
            respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted registering host functions");
            return;
        }
    }
    /* Creating a context is most of a sandbox's start-up; the boot one is reused when
     * nothing has run in it yet. */
    if (!rt_state.ctx_pristine && context_reset() < 0) {
        respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted creating the JavaScript context");
        return;
    }
    rt_state.options = options;
    if (context_configure() < 0) {
        respond_exception(JS_GetException(rt_state.ctx));
        return;
    }
    respond_ok();
}

/* "<namespace>:<name>" (namespace "user" when empty), NUL-terminated; NULL on OOM. */
static char *module_specifier(const struct field *ns, const struct field *name)
{
    const char *ns_text = ns->len ? NULL : "user";
    size_t ns_len = ns->len ? ns->len : 4;
    size_t spec_len = ns_len + 1 + name->len;
    char *spec = airlock_malloc(spec_len + 1);
    if (!spec)
        return NULL;
    memcpy(spec, ns_text ? (const void *)ns_text : (const void *)ns->data, ns_len);
    spec[ns_len] = ':';
    memcpy(spec + ns_len + 1, name->data, name->len);
    spec[spec_len] = '\0';
    return spec;
}

static int register_module(const struct field *ns, const struct field *name, const struct field *source,
                           const struct field *bytecode)
{
    char *spec = module_specifier(ns, name);
    char *src = dup_field(source);
    uint8_t *bc = bytecode->len ? (uint8_t *)dup_field(bytecode) : NULL;
    struct user_module *grown = NULL;
    if (spec && src && (bc || !bytecode->len))
        grown = airlock_realloc(rt_state.modules, (rt_state.module_count + 1) * sizeof *rt_state.modules);
    if (!grown) {
        airlock_free(spec);
        airlock_free(src);
        airlock_free(bc);
        return -1;
    }
    rt_state.modules = grown;
    /* A later registration of the same specifier replaces the source. */
    for (uint32_t i = 0; i < rt_state.module_count; i++) {
        if (strcmp(rt_state.modules[i].specifier, spec) == 0) {
            airlock_free(rt_state.modules[i].source);
            airlock_free(rt_state.modules[i].bytecode);
            airlock_free(spec);
            rt_state.modules[i].source = src;
            rt_state.modules[i].source_len = source->len;
            rt_state.modules[i].bytecode = bc;
            rt_state.modules[i].bytecode_len = bytecode->len;
            return 0;
        }
    }
    rt_state.modules[rt_state.module_count++] = (struct user_module){spec, src, source->len, bc, bytecode->len};
    return 0;
}

/* Formats "handler 'x': Name: message (location)" from the pending exception. */
static void compile_error_from_exception(const char *handler_name, char *buf, size_t size)
{
    JSValue exc = JS_GetException(rt_state.ctx);
    struct exception_info info;
    exception_describe(rt_state.ctx, exc, &info);
    char loc[160];
    first_frame_location(info.stack, loc, sizeof loc);
    snprintf(buf, size, "handler '%s': %s%s%s%s%s%s", handler_name, info.name, info.name[0] ? ": " : "", info.message,
             loc[0] ? " (" : "", loc, loc[0] ? ")" : "");
    exception_release(rt_state.ctx, &info);
    JS_FreeValue(rt_state.ctx, exc);
}

/* Compiles (nothing runs) a handler's source as the module "handler:<name>" with the
 * export line appended: LOAD and COMPILE both come here, so cached bytecode is what
 * LOAD would have compiled, file name and line/column table included. */
static JSValue compile_handler_source(JSContext *ctx, const struct field *name, const struct field *source)
{
    size_t module_name_len = 8 + name->len;
    char *module_name = airlock_malloc(module_name_len + 1);
    size_t text_len = source->len + sizeof handler_suffix - 1;
    char *text = airlock_malloc(text_len + 1);
    JSValue fn = JS_EXCEPTION;
    if (!module_name || !text) {
        JS_ThrowOutOfMemory(ctx);
        goto out;
    }
    memcpy(module_name, "handler:", 8);
    memcpy(module_name + 8, name->data, name->len);
    module_name[module_name_len] = '\0';
    memcpy(text, source->data, source->len);
    memcpy(text + source->len, handler_suffix, sizeof handler_suffix); /* includes the NUL */
    fn = JS_Eval(ctx, text, text_len, module_name, JS_EVAL_TYPE_MODULE | JS_EVAL_FLAG_COMPILE_ONLY);
out:
    airlock_free(module_name);
    airlock_free(text);
    return fn;
}

/* Compiles and evaluates one handler (from its cached bytecode when `bytecode` is
 * non-empty). 0, or -1 with an error message in buf. */
static int compile_handler(const struct field *name_field, const struct field *source, const struct field *bytecode,
                           char *buf, size_t size)
{
    JSContext *ctx = rt_state.ctx;
    char *name = dup_field(name_field);
    JSValue promise = JS_UNDEFINED;
    int rc = -1;
    if (!name) {
        snprintf(buf, size, "guest heap exhausted compiling a handler");
        goto out;
    }
    JSValue fn = bytecode->len ? read_module_bytecode(ctx, bytecode->data, bytecode->len)
                               : compile_handler_source(ctx, name_field, source);
    if (JS_IsException(fn)) {
        compile_error_from_exception(name, buf, size);
        goto out;
    }
    if (JS_ResolveModule(ctx, fn) < 0) {
        JS_FreeValue(ctx, fn);
        compile_error_from_exception(name, buf, size);
        goto out;
    }
    /* Invariant: fn is a JS_TAG_MODULE value (COMPILE_ONLY module eval succeeded); the
     * module stays alive in the context after JS_EvalFunction consumes the value. */
    JSModuleDef *mod = JS_VALUE_GET_PTR(fn);
    promise = JS_EvalFunction(ctx, fn);
    if (JS_IsException(promise)) {
        promise = JS_UNDEFINED;
        compile_error_from_exception(name, buf, size);
        goto out;
    }
    run_jobs(promise);
    int state = JS_PromiseState(ctx, promise);
    if (state == JS_PROMISE_REJECTED) {
        JS_Throw(ctx, JS_PromiseResult(ctx, promise));
        compile_error_from_exception(name, buf, size);
        goto out;
    }
    if (state == JS_PROMISE_PENDING) {
        snprintf(buf, size, "handler '%s': top-level await never settled", name);
        goto out;
    }
    JSValue ns = JS_GetModuleNamespace(ctx, mod);
    if (JS_IsException(ns)) {
        compile_error_from_exception(name, buf, size);
        goto out;
    }
    JSValue handler_fn = JS_GetPropertyStr(ctx, ns, HANDLER_EXPORT);
    if (!JS_IsFunction(ctx, handler_fn)) {
        JS_FreeValue(ctx, handler_fn);
        handler_fn = JS_GetPropertyStr(ctx, ns, "default");
    }
    JS_FreeValue(ctx, ns);
    if (JS_IsException(handler_fn)) {
        compile_error_from_exception(name, buf, size);
        goto out;
    }
    if (!JS_IsFunction(ctx, handler_fn)) {
        JS_FreeValue(ctx, handler_fn);
        snprintf(buf, size, "handler '%s' does not define a function named handler or a default export", name);
        goto out;
    }
    struct handler *grown = airlock_realloc(rt_state.handlers, (rt_state.handler_count + 1) * sizeof *grown);
    if (!grown) {
        JS_FreeValue(ctx, handler_fn);
        snprintf(buf, size, "guest heap exhausted registering handler '%s'", name);
        goto out;
    }
    rt_state.handlers = grown;
    for (uint32_t i = 0; i < rt_state.handler_count; i++) {
        if (strcmp(rt_state.handlers[i].name, name) == 0) {
            JS_FreeValue(ctx, rt_state.handlers[i].fn);
            rt_state.handlers[i].fn = handler_fn;
            rc = 0;
            goto out;
        }
    }
    rt_state.handlers[rt_state.handler_count++] = (struct handler){name, handler_fn};
    name = NULL; /* owned by the table now */
    rc = 0;
out:
    JS_FreeValue(ctx, promise);
    airlock_free(name);
    return rc;
}

/* LOAD's and COMPILE's groups: (tag, namespace, name, source), plus the bytecode with
 * LOAD_FLAG_BYTECODE. */
struct load_group {
    struct field tag, ns, name, source, bytecode;
};

static void group_next(struct field_iter *it, unsigned group_size, struct load_group *g)
{
    field_next(it, &g->ns);
    field_next(it, &g->name);
    field_next(it, &g->source);
    g->bytecode = (struct field){NULL, 0};
    if (group_size == 5)
        field_next(it, &g->bytecode);
}

/* Checks every group's shape; answers BAD_REQUEST and returns -1 when one is wrong. */
static int groups_check(const struct msg_view *m, unsigned group_size, const char *what)
{
    if (m->count % group_size != 0) {
        respond_fmt(AIRLOCK_STATUS_BAD_REQUEST, "%s needs (tag, namespace, name, source%s) groups", what,
                    group_size == 5 ? ", bytecode" : "");
        return -1;
    }
    struct field_iter it;
    struct load_group g;
    field_iter_init(&it, m);
    while (field_next(&it, &g.tag) == 0) {
        group_next(&it, group_size, &g);
        int is_module = field_equals(&g.tag, "module");
        if (!is_module && !field_equals(&g.tag, "handler")) {
            respond_fmt(AIRLOCK_STATUS_BAD_REQUEST, "%s tag must be 'module' or 'handler'", what);
            return -1;
        }
        if (g.name.len == 0 || memchr(g.name.data, '\0', g.name.len) || memchr(g.ns.data, '\0', g.ns.len) ||
            memchr(g.source.data, '\0', g.source.len)) {
            respond_fmt(AIRLOCK_STATUS_BAD_REQUEST, "%s names must be non-empty and text must contain no NUL", what);
            return -1;
        }
    }
    return 0;
}

static void handle_load(const struct msg_view *m)
{
    rt_state.ctx_pristine = 0;
    /* Bytecode is read only where the host's flag says the request carries it. */
    unsigned group_size = (m->status & AIRLOCK_LOAD_FLAG_BYTECODE) ? 5 : 4;
    if (groups_check(m, group_size, "LOAD") < 0)
        return;
    struct field_iter it;
    struct load_group g;
    /* Register all modules, then compile handlers, so modules and handlers may come in
     * any order. */
    field_iter_init(&it, m);
    while (field_next(&it, &g.tag) == 0) {
        group_next(&it, group_size, &g);
        if (field_equals(&g.tag, "module") && register_module(&g.ns, &g.name, &g.source, &g.bytecode) < 0) {
            respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted registering modules");
            return;
        }
    }
    char error[1024];
    field_iter_init(&it, m);
    while (field_next(&it, &g.tag) == 0) {
        group_next(&it, group_size, &g);
        if (!field_equals(&g.tag, "handler"))
            continue;
        if (compile_handler(&g.name, &g.source, &g.bytecode, error, sizeof error) < 0) {
            handlers_clear(); /* LOAD is all-or-nothing */
            if (rt_state.interrupted)
                respond_text(AIRLOCK_STATUS_INTERRUPTED, "loading was interrupted by the host");
            else if (rt_state.oom)
                respond_fmt(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted while loading: %s", error);
            else
                respond_text(AIRLOCK_STATUS_COMPILE_ERROR, error);
            collect_garbage();
            return;
        }
    }
    respond_ok();
}

/* COMPILE: each group's bytecode, exactly what LOAD would compile from it (nothing runs:
 * no module is resolved or evaluated). A group that does not compile gets an empty field,
 * so LOAD compiles it itself and reports the error as it always has. The host sends this
 * only to a guest that has run no tenant code and restores it before every COMPILE. */
static void handle_compile(const struct msg_view *m)
{
    rt_state.ctx_pristine = 0;
    if (groups_check(m, 4, "COMPILE") < 0)
        return;
    uint32_t n = m->count / 4;
    struct field *out = airlock_calloc(n ? n : 1, sizeof *out);
    if (!out) {
        respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted compiling");
        return;
    }
    struct field_iter it;
    struct load_group g;
    rt_state.compiling = 1;
    field_iter_init(&it, m);
    for (uint32_t i = 0; i < n; i++) {
        field_next(&it, &g.tag);
        group_next(&it, 4, &g);
        JSValue fn;
        if (field_equals(&g.tag, "handler")) {
            fn = compile_handler_source(rt_state.ctx, &g.name, &g.source);
        } else {
            char *spec = module_specifier(&g.ns, &g.name);
            char *src = dup_field(&g.source); /* JS_Eval wants the NUL */
            fn = spec && src ? JS_Eval(rt_state.ctx, src, g.source.len, spec, JS_EVAL_TYPE_MODULE | JS_EVAL_FLAG_COMPILE_ONLY)
                             : JS_ThrowOutOfMemory(rt_state.ctx);
            airlock_free(spec);
            airlock_free(src);
        }
        if (JS_IsException(fn)) {
            JS_FreeValue(rt_state.ctx, JS_GetException(rt_state.ctx));
            continue;
        }
        size_t len = 0;
        uint8_t *bytes = JS_WriteObject(rt_state.ctx, &len, fn, JS_WRITE_OBJ_BYTECODE);
        JS_FreeValue(rt_state.ctx, fn);
        if (!bytes || len > UINT32_MAX) {
            if (bytes)
                js_free(rt_state.ctx, bytes);
            JS_FreeValue(rt_state.ctx, JS_GetException(rt_state.ctx));
            continue;
        }
        out[i] = (struct field){bytes, (uint32_t)len};
    }
    rt_state.compiling = 0;
    respond(AIRLOCK_STATUS_OK, out, n);
    for (uint32_t i = 0; i < n; i++)
        if (out[i].data)
            js_free(rt_state.ctx, (void *)out[i].data);
    airlock_free(out);
}

static struct handler *handler_find(const struct field *name)
{
    for (uint32_t i = 0; i < rt_state.handler_count; i++)
        if (field_equals(name, rt_state.handlers[i].name))
            return &rt_state.handlers[i];
    return NULL;
}

/* Answers with the exception pending in the context (or `value` when it is a
 * rejection reason), classified as interrupt, OOM, stack overflow or EXCEPTION. */
static void respond_exception(JSValue exc)
{
    JSContext *ctx = rt_state.ctx;
    if (rt_state.interrupted) {
        JS_FreeValue(ctx, exc);
        respond_text(AIRLOCK_STATUS_INTERRUPTED, "execution was interrupted by the host");
        return;
    }
    struct exception_info info;
    exception_describe(ctx, exc, &info);
    if (rt_state.oom) {
        respond_fmt(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap of %llu bytes exhausted (%s: %s)",
                    (unsigned long long)plat_control()->heap_size, info.name, info.message);
    } else if (is_stack_overflow(&info)) {
        respond_fmt(AIRLOCK_STATUS_STACK_OVERFLOW, "guest JavaScript stack exhausted (%s: %s)", info.name,
                    info.message);
    } else {
        struct field f[3] = {
            {(const uint8_t *)info.name, (uint32_t)strlen(info.name)},
            {(const uint8_t *)info.message, (uint32_t)strlen(info.message)},
            {(const uint8_t *)info.stack, (uint32_t)strlen(info.stack)},
        };
        respond(AIRLOCK_STATUS_EXCEPTION, f, 3);
    }
    exception_release(ctx, &info);
    JS_FreeValue(ctx, exc);
}

static void handle_call(const struct msg_view *m)
{
    rt_state.ctx_pristine = 0;
    JSContext *ctx = rt_state.ctx;
    uint32_t flags = m->status;
    struct field name_field, event_field;
    if (msg_field(m, 0, &name_field) < 0) {
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, "CALL needs a handler name");
        return;
    }
    struct handler *h = handler_find(&name_field);
    if (!h) {
        char name[128];
        size_t n = name_field.len < sizeof name - 1 ? name_field.len : sizeof name - 1;
        memcpy(name, name_field.data, n);
        name[n] = '\0';
        respond_fmt(AIRLOCK_STATUS_NO_HANDLER, "no handler named '%s' is loaded", name);
        return;
    }
    JSValue event = JS_UNDEFINED;
    if (msg_field(m, 1, &event_field) == 0) {
        event = webapi_decode(ctx, m, 1, "<event>");
        if (JS_IsException(event)) {
            JSValue exc = JS_GetException(ctx);
            if (rt_state.oom) {
                respond_exception(exc);
                return;
            }
            struct exception_info info;
            exception_describe(ctx, exc, &info);
            respond_fmt(AIRLOCK_STATUS_BAD_REQUEST, "event is not valid JSON: %s", info.message);
            exception_release(ctx, &info);
            JS_FreeValue(ctx, exc);
            return;
        }
    }
    /* The request's fields are not used past this point: host calls reuse the input. */
    JSValue fn = JS_DupValue(ctx, h->fn);
    JSValue result = JS_Call(ctx, fn, JS_UNDEFINED, 1, (JSValueConst *)&event);
    JS_FreeValue(ctx, fn);
    JS_FreeValue(ctx, event);
    if (JS_IsException(result)) {
        respond_exception(JS_GetException(ctx));
        goto done;
    }
    if (JS_IsObject(result) && (int)JS_PromiseState(ctx, result) >= 0) { /* -1: not a promise */
        run_jobs(result);
        int state = JS_PromiseState(ctx, result);
        if (rt_state.interrupted) {
            JS_FreeValue(ctx, result);
            respond_exception(JS_UNDEFINED);
            goto done;
        }
        JSValue uncaught = eventloop_take_uncaught(ctx);
        if (!JS_IsUninitialized(uncaught)) {
            JS_FreeValue(ctx, result);
            respond_exception(uncaught);
            goto done;
        }
        if (state == JS_PROMISE_PENDING) {
            JS_FreeValue(ctx, result);
            char name[128];
            snprintf(name, sizeof name, "%s", h->name);
            respond_fmt(AIRLOCK_STATUS_UNSETTLED, "handler '%s' returned a promise that never settled", name);
            goto done;
        }
        JSValue settled = JS_PromiseResult(ctx, result);
        JS_FreeValue(ctx, result);
        if (state == JS_PROMISE_REJECTED) {
            respond_exception(settled);
            goto done;
        }
        result = settled;
    }
    drain_jobs();
    if (rt_state.interrupted || rt_state.oom) {
        JS_FreeValue(ctx, result);
        respond_exception(JS_UNDEFINED);
        goto done;
    }
    JSValue late_uncaught = eventloop_take_uncaught(ctx);
    if (!JS_IsUninitialized(late_uncaught)) {
        JS_FreeValue(ctx, result);
        respond_exception(late_uncaught);
        goto done;
    }
    struct webapi_encoded enc;
    int encoded = webapi_encode(ctx, result, &enc);
    JS_FreeValue(ctx, result);
    if (encoded < 0) {
        JSValue exc = JS_GetException(ctx);
        if (rt_state.oom || rt_state.interrupted) {
            respond_exception(exc);
            goto done;
        }
        struct exception_info info;
        exception_describe(ctx, exc, &info);
        respond_fmt(AIRLOCK_STATUS_NOT_SERIALIZABLE, "handler result is not JSON-serializable: %s: %s", info.name,
                    info.message);
        exception_release(ctx, &info);
        JS_FreeValue(ctx, exc);
        goto done;
    }
    if (JS_IsUndefined(enc.json))
        respond_ok();
    else
        respond(AIRLOCK_STATUS_OK, enc.fields, enc.count);
    webapi_encoded_free(ctx, &enc);
done:
    if ((flags & AIRLOCK_CALL_FLAG_GC) || rt_state.oom)
        rt_state.gc_pending = GC_FULL;
    else if (flags & AIRLOCK_CALL_FLAG_GC_AUTO)
        rt_state.gc_pending = GC_IF_GROWN;
}

static void handle_chunk(const struct msg_view *m)
{
    struct field f;
    if (msg_field(m, 0, &f) < 0) {
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, "CHUNK needs one field");
        return;
    }
    if (f.len) {
        uint8_t *grown = airlock_realloc(rt_state.chunk_buf, rt_state.chunk_len + f.len);
        if (!grown) {
            airlock_free(rt_state.chunk_buf);
            rt_state.chunk_buf = NULL;
            rt_state.chunk_len = 0;
            respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted assembling a chunked request");
            return;
        }
        memcpy(grown + rt_state.chunk_len, f.data, f.len);
        rt_state.chunk_buf = grown;
        rt_state.chunk_len += f.len;
    }
    if (!(m->status & AIRLOCK_CHUNK_FLAG_LAST)) {
        respond_ok();
        return;
    }
    uint8_t *whole = rt_state.chunk_buf;
    size_t whole_len = rt_state.chunk_len;
    rt_state.chunk_buf = NULL;
    rt_state.chunk_len = 0;
    struct msg_view inner;
    const char *why;
    if (!whole || msg_parse(whole, whole_len, &inner, &why) < 0)
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, whole ? why : "empty chunked request");
    else if (inner.kind == AIRLOCK_MSG_CHUNK)
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, "a chunked request cannot itself be a CHUNK");
    else
        handle_message(whole, whole_len);
    airlock_free(whole);
}

/* AIRLOCK_REQUEST_FLAG_ENTROPY: drops the trailing entropy field from `m`, mixing it into
 * the CSPRNG when `mix`. -1 when the field is missing or has the wrong size. */
static int take_entropy(struct msg_view *m, int mix)
{
    if (!(m->status & AIRLOCK_REQUEST_FLAG_ENTROPY) || m->kind == AIRLOCK_MSG_CHUNK)
        return 0;
    struct field f;
    if (m->count == 0 || msg_field(m, m->count - 1, &f) < 0 || f.len != AIRLOCK_ENTROPY_SIZE)
        return -1;
    if (mix)
        random_mix_entropy(f.data, f.len);
    m->count--;
    return 0;
}

static void handle_message(const uint8_t *buf, size_t len)
{
    struct msg_view m;
    const char *why;
    if (msg_parse(buf, len, &m, &why) < 0) {
        respond_fmt(AIRLOCK_STATUS_BAD_REQUEST, "malformed request: %s", why);
        return;
    }
    if (take_entropy(&m, 1) < 0) {
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, "the request's entropy field is missing or has the wrong size");
        return;
    }
    switch (m.kind) {
    case AIRLOCK_MSG_LOAD_RUNTIME:
        handle_load_runtime(&m);
        break;
    case AIRLOCK_MSG_LOAD: {
        /* Handler top-level code may call host functions, whose replies overwrite
         * the input buffer: work from a private copy of the request. */
        uint8_t *copy = airlock_malloc(len ? len : 1);
        if (!copy) {
            respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted copying the LOAD request");
            break;
        }
        memcpy(copy, buf, len);
        msg_parse(copy, len, &m, &why); /* same bytes: cannot fail */
        take_entropy(&m, 0);              /* nor can this: mixed above */
        handle_load(&m);
        airlock_free(copy);
        break;
    }
    case AIRLOCK_MSG_CALL:
        handle_call(&m);
        break;
    case AIRLOCK_MSG_COMPILE:
        handle_compile(&m);
        break;
    case AIRLOCK_MSG_UNLOAD:
        if (context_reset() < 0)
            respond_text(AIRLOCK_STATUS_OUT_OF_MEMORY, "guest heap exhausted creating the JavaScript context");
        else if (context_configure() < 0)
            respond_exception(JS_GetException(rt_state.ctx));
        else
            respond_ok();
        break;
    case AIRLOCK_MSG_GC:
        collect_garbage();
        respond_ok();
        break;
    case AIRLOCK_MSG_CHUNK:
        handle_chunk(&m);
        break;
    case AIRLOCK_MSG_HOST_RETURN:
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, "HOST_RETURN arrived with no host call in flight");
        break;
    default:
        respond_fmt(AIRLOCK_STATUS_BAD_REQUEST, "unknown request kind %u", m.kind);
        break;
    }
}

/* Whether the heap grew enough since the last collection (the post-call GC policy). A
 * collection QuickJS ran by itself is seen as a heap below the baseline. */
static int heap_grew(void)
{
    if (rt_state.js_bytes < rt_state.gc_baseline)
        rt_state.gc_baseline = rt_state.js_bytes;
    size_t grown = rt_state.js_bytes - rt_state.gc_baseline;
    size_t needed = rt_state.gc_baseline / GC_GROWTH_SHARE;
    return grown >= (needed > GC_MIN_GROWTH ? needed : GC_MIN_GROWTH);
}

void airlock_runtime_after(void)
{
    int pending = rt_state.gc_pending;
    rt_state.gc_pending = GC_NONE;
    if (!rt_state.rt || pending == GC_NONE)
        return;
    if (pending == GC_FULL || heap_grew())
        collect_garbage();
}

void airlock_runtime_handle(void)
{
    struct airlock_control *c = plat_control();
    /* A target that skipped airlock_runtime_after still collects before the next request. */
    airlock_runtime_after();
    rt_state.oom = 0;
    rt_state.interrupted = 0;
    console_begin_request();
    if (!rt_state.ctx) {
        respond_text(AIRLOCK_STATUS_BAD_REQUEST, "the runtime failed to boot");
        return;
    }
    if (c->request_len > c->input_size) {
        respond_fmt(AIRLOCK_STATUS_BAD_REQUEST, "request of %u bytes exceeds the %llu-byte input buffer",
                    c->request_len, (unsigned long long)c->input_size);
        return;
    }
    /* Invariant: the host mapped [input_addr, +input_size) for the guest. */
    handle_message((const uint8_t *)(uintptr_t)c->input_addr, c->request_len);
    /* Timers and async host calls live within one request (docs/API.md). */
    if (rt_state.ctx)
        eventloop_end(rt_state.ctx);
}

/* Leaves room below QuickJS's limit for C frames that run after its last check. */
static size_t js_stack_budget(uint64_t stack_size)
{
    uint64_t margin = stack_size / 4;
    if (margin < 64 * 1024)
        margin = stack_size / 2;
    if (margin > 1024 * 1024)
        margin = 1024 * 1024;
    uint64_t budget = stack_size - margin;
    return budget ? (size_t)budget : 1;
}

void airlock_runtime_init(void)
{
    struct airlock_control *c = plat_control();
    rt_state.boot_ns = plat_monotonic_ns();
    /* Invariant: the host mapped [heap_addr, +heap_size) for the guest. */
    if (airlock_alloc_init((void *)(uintptr_t)c->heap_addr, (size_t)c->heap_size) < 0)
        plat_abort("guest heap is too small to boot");
    rt_state.rt = JS_NewRuntime2(&js_heap_functions, NULL);
    if (!rt_state.rt)
        plat_abort("guest heap exhausted creating the JavaScript runtime");
    JS_SetMaxStackSize(rt_state.rt, js_stack_budget(c->stack_size));
    JS_SetInterruptHandler(rt_state.rt, js_interrupt, NULL);
    JS_SetModuleLoaderFunc(rt_state.rt, module_normalize, module_load, NULL);
    /* Atomics.wait would block on a futex: the guest has no kernel to ask. */
    JS_SetCanBlock(rt_state.rt, 0);
    rt_state.ctx = context_create();
    if (!rt_state.ctx)
        plat_abort("guest heap exhausted creating the JavaScript context");
    rt_state.ctx_pristine = 1;
    rt_state.gc_baseline = rt_state.js_bytes;
    c->magic = AIRLOCK_CONTROL_MAGIC;
    c->abi_version = AIRLOCK_ABI_VERSION;
    const char *fields[1] = {AIRLOCK_ENGINE_VERSION};
    write_alone(AIRLOCK_MSG_READY, 0, fields, 1);
}
