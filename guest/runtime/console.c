/* console.c — the guest's `console` object and its per-request capture: messages are
 * formatted roughly like Node and written as encoded CONSOLE messages straight into
 * the output buffer, with response_len kept current after each, so a host that stops
 * the guest mid-call still finds every line written so far; up to
 * control->console_limit bytes of text, counted once the limit is reached. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "runtime.h"

static const char *const level_names[] = {"log", "info", "warn", "error", "debug"};
enum { LEVEL_LOG, LEVEL_INFO, LEVEL_WARN, LEVEL_ERROR, LEVEL_DEBUG };

static struct {
    uint32_t len;      /* bytes of CONSOLE messages at the start of the output buffer */
    uint64_t overflow; /* bytes of messages that did not fit the output buffer after them */
    uint64_t kept;     /* text bytes kept during this request */
    uint64_t dropped;  /* text bytes dropped during this request */
} console;

/* The output buffer is free again: nothing in it is for the host. */
void console_clear_pending(void)
{
    console.len = 0;
    console.overflow = 0;
    plat_control()->response_len = 0;
}

void console_begin_request(void)
{
    console_clear_pending();
    console.kept = 0;
    console.dropped = 0;
}

size_t console_pending_bytes(void) { return console.len + console.overflow; }

size_t console_written_bytes(void) { return console.len; }

static void console_append(unsigned level, const char *text, size_t len)
{
    uint64_t limit = plat_control()->console_limit;
    const char *lname = level_names[level];
    size_t lens[2] = {strlen(lname), len};
    size_t need = msg_size(lens, 2);
    if (len > limit || console.kept + len > limit) {
        console.dropped += len;
        return;
    }
    console.kept += len;
    struct out_buf out = runtime_output();
    /* Once one message did not fit, later ones are not written either: the lines keep
     * their order, and the response reports the whole size (TOO_LARGE). */
    if (console.overflow || need > out.cap - console.len) {
        console.overflow += need;
        return;
    }
    out.len = console.len;
    struct msg_writer w;
    msg_begin(&w, &out, AIRLOCK_MSG_CONSOLE, 0);
    msg_add_str(&w, lname);
    msg_add(&w, text, len);
    msg_end(&w); /* cannot overflow: the room was checked above */
    console.len = out.len;
    /* Published after the message is whole: the host may stop the guest at any
     * instruction, so the compiler must not move this store before the message's
     * (the fence); the host still checks every length. */
    atomic_signal_fence(memory_order_release);
    plat_control()->response_len = console.len;
}

int console_write_pending(struct out_buf *out)
{
    /* The messages are already at the start of the output buffer, where `out` starts. */
    if (console.overflow || out->len != 0)
        return -1;
    out->len = console.len;
    return 0;
}

int console_write_dropped_notice(struct out_buf *out)
{
    if (console.dropped == 0)
        return 0;
    char text[96];
    snprintf(text, sizeof text, "[airlock] %llu bytes of console output dropped",
             (unsigned long long)console.dropped);
    struct msg_writer w;
    msg_begin(&w, out, AIRLOCK_MSG_CONSOLE, 0);
    msg_add_str(&w, level_names[LEVEL_WARN]);
    msg_add_str(&w, text);
    return msg_end(&w);
}

/* A growable text buffer on the raw heap. */
struct text {
    char *p;
    size_t len, cap;
    int failed;
};

static void text_add(struct text *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 128;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *grown = airlock_realloc(t->p, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->p = grown;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
}

/* Adds the JS string conversion of v (String(v) semantics, symbols included). */
static void text_add_string_of(JSContext *ctx, struct text *t, JSValueConst v)
{
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue string_ctor = JS_GetPropertyStr(ctx, global, "String");
    JSValue s = JS_Call(ctx, string_ctor, JS_UNDEFINED, 1, &v);
    JS_FreeValue(ctx, string_ctor);
    JS_FreeValue(ctx, global);
    size_t n;
    const char *c = JS_IsException(s) ? NULL : JS_ToCStringLen(ctx, &n, s);
    if (c) {
        text_add(t, c, n);
        JS_FreeCString(ctx, c);
    } else {
        JS_FreeValue(ctx, JS_GetException(ctx));
        text_add(t, "[unprintable]", 13);
    }
    JS_FreeValue(ctx, s);
}

static void text_add_prop(JSContext *ctx, struct text *t, JSValueConst obj, const char *prop, const char *fallback)
{
    JSValue v = JS_GetPropertyStr(ctx, obj, prop);
    if (JS_IsException(v)) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        text_add(t, fallback, strlen(fallback));
    } else if (JS_IsUndefined(v)) {
        text_add(t, fallback, strlen(fallback));
    } else {
        text_add_string_of(ctx, t, v);
    }
    JS_FreeValue(ctx, v);
}

static void format_value(JSContext *ctx, struct text *t, JSValueConst v)
{
    if (JS_IsString(v)) {
        size_t n;
        const char *c = JS_ToCStringLen(ctx, &n, v);
        if (c) {
            text_add(t, c, n);
            JS_FreeCString(ctx, c);
        }
        return;
    }
    if (JS_IsError(ctx, v)) {
        /* Node prints the stack, which there starts with "name: message". */
        text_add_prop(ctx, t, v, "name", "Error");
        text_add(t, ": ", 2);
        text_add_prop(ctx, t, v, "message", "");
        JSValue stack = JS_GetPropertyStr(ctx, v, "stack");
        if (JS_IsString(stack)) {
            size_t n;
            const char *c = JS_ToCStringLen(ctx, &n, stack);
            if (c) {
                while (n > 0 && (c[n - 1] == '\n'))
                    n--;
                if (n > 0) {
                    text_add(t, "\n", 1);
                    text_add(t, c, n);
                }
                JS_FreeCString(ctx, c);
            }
        } else if (JS_IsException(stack)) {
            JS_FreeValue(ctx, JS_GetException(ctx));
        }
        JS_FreeValue(ctx, stack);
        return;
    }
    if (JS_IsFunction(ctx, v)) {
        text_add(t, "[Function: ", 11);
        text_add_prop(ctx, t, v, "name", "(anonymous)");
        text_add(t, "]", 1);
        return;
    }
    if (JS_IsObject(v)) {
        JSValue json = JS_JSONStringify(ctx, v, JS_UNDEFINED, JS_UNDEFINED);
        if (JS_IsString(json)) {
            size_t n;
            const char *c = JS_ToCStringLen(ctx, &n, json);
            if (c) {
                text_add(t, c, n);
                JS_FreeCString(ctx, c);
                JS_FreeValue(ctx, json);
                return;
            }
        }
        if (JS_IsException(json))
            JS_FreeValue(ctx, JS_GetException(ctx));
        JS_FreeValue(ctx, json);
    }
    text_add_string_of(ctx, t, v);
}

static JSValue js_console_method(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv, int level)
{
    (void)this_val;
    struct text t = {0};
    for (int i = 0; i < argc; i++) {
        if (i > 0)
            text_add(&t, " ", 1);
        format_value(ctx, &t, argv[i]);
    }
    if (t.failed)
        console.dropped += t.len;
    else
        console_append((unsigned)level, t.p ? t.p : "", t.len);
    airlock_free(t.p);
    return JS_UNDEFINED;
}

static const JSCFunctionListEntry console_funcs[] = {
    JS_CFUNC_MAGIC_DEF("log", 0, js_console_method, LEVEL_LOG),
    JS_CFUNC_MAGIC_DEF("info", 0, js_console_method, LEVEL_INFO),
    JS_CFUNC_MAGIC_DEF("warn", 0, js_console_method, LEVEL_WARN),
    JS_CFUNC_MAGIC_DEF("error", 0, js_console_method, LEVEL_ERROR),
    JS_CFUNC_MAGIC_DEF("debug", 0, js_console_method, LEVEL_DEBUG),
    JS_CFUNC_MAGIC_DEF("trace", 0, js_console_method, LEVEL_DEBUG),
};

void console_install(JSContext *ctx)
{
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue obj = JS_NewObject(ctx);
    JS_SetPropertyFunctionList(ctx, obj, console_funcs, sizeof console_funcs / sizeof console_funcs[0]);
    JS_SetPropertyStr(ctx, global, "console", obj);
    JS_FreeValue(ctx, global);
}
