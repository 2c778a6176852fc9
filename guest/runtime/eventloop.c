/* eventloop.c — the guest event loop: setTimeout/setInterval/clearTimeout/clearInterval,
 * queueMicrotask, non-blocking host calls and fetch. Timers and async calls live in a
 * small JavaScript prelude; sleeping is one blocking host call (`airlock:loop` `wait`,
 * or `sleep` when only a timer can end it) that the host answers when the earliest
 * timer is due or an async call completes, so the guest never spins and its CPU time
 * does not run while it waits. */
#include <string.h>

#include "eventloop.h"
#include "platform.h"
#include "runtime.h"

static const char prelude_source[] =
    "(function (native) {\n"
    "  'use strict';\n"
    "  const hostCall = native.hostCall, now = native.now, reportUncaught = native.reportUncaught;\n"
    "  const decodeBase64 = native.decodeBase64, encodeBase64 = native.encodeBase64, decodeUtf8 = native.decodeUtf8;\n"
    "  const MAX_DELAY = 2147483647;\n"
    "  const ObjectDefine = Object.defineProperty;\n"
    "  const timers = new Map();\n"
    "  const calls = new Map();\n"
    "  let nextTimerId = 1;\n"
    "  let failed = false;\n"
    "\n"
    "  function fail(error) {\n"
    "    if (!failed) {\n"
    "      failed = true;\n"
    "      reportUncaught(error);\n"
    "    }\n"
    "  }\n"
    "  function describe(value) {\n"
    "    if (value === null) return 'null';\n"
    "    if (typeof value === 'function') return 'function';\n"
    "    if (typeof value === 'object') return 'an instance of ' + ((value.constructor && value.constructor.name) || 'Object');\n"
    "    if (typeof value === 'symbol') return 'type symbol';\n"
    "    return 'type ' + typeof value + ' (' + String(value).slice(0, 40) + ')';\n"
    "  }\n"
    "  function requireCallback(callback) {\n"
    "    if (typeof callback !== 'function') {\n"
    "      const e = new TypeError('The \"callback\" argument must be of type function. Received ' + describe(callback));\n"
    "      ObjectDefine(e, 'code', { value: 'ERR_INVALID_ARG_TYPE', writable: true, configurable: true });\n"
    "      throw e;\n"
    "    }\n"
    "  }\n"
    "  function schedule(callback, delay, args, repeat) {\n"
    "    requireCallback(callback);\n"
    "    let ms = +delay;\n"
    "    if (!(ms >= 1 && ms <= MAX_DELAY)) ms = 1;\n"
    "    const id = nextTimerId++;\n"
    "    timers.set(id, { callback: callback, args: args, at: now() + ms, every: repeat ? ms : 0 });\n"
    "    return id;\n"
    "  }\n"
    "  function clearTimer(id) {\n"
    "    if (typeof id === 'number' || typeof id === 'string') timers.delete(+id);\n"
    "  }\n"
    "  function hostFunctionError(message) {\n"
    "    const e = new Error(message);\n"
    "    ObjectDefine(e, 'name', { value: 'HostFunctionError', writable: true, configurable: true });\n"
    "    return e;\n"
    "  }\n"
    "\n"
    "  const globals = {\n"
    "    setTimeout: function setTimeout(callback, delay, ...args) { return schedule(callback, delay, args, false); },\n"
    "    setInterval: function setInterval(callback, delay, ...args) { return schedule(callback, delay, args, true); },\n"
    "    clearTimeout: function clearTimeout(id) { clearTimer(id); },\n"
    "    clearInterval: function clearInterval(id) { clearTimer(id); },\n"
    "    queueMicrotask: function queueMicrotask(callback) {\n"
    "      requireCallback(callback);\n"
    "      Promise.resolve().then(function () {\n"
    "        try {\n"
    "          callback();\n"
    "        } catch (e) {\n"
    "          fail(e);\n"
    "        }\n"
    "      });\n"
    "    },\n"
    "    fetch: function fetch(input, init) {\n"
    "      return new Promise(function (resolve, reject) {\n"
    "        const request = fetchRequest(input, init === undefined || init === null ? {} : init);\n"
    "        start('airlock:fetch', 'fetch', [request], function (r) { return new Response(r); }, resolve, reject);\n"
    "      });\n"
    "    },\n"
    "  };\n"
    "\n"
    "  // Starts a non-blocking host call; its completion arrives from a later wait.\n"
    "  function start(module, fn, args, map, resolve, reject) {\n"
    "    const id = hostCall('airlock:loop', 'start', [module, fn, args]);\n"
    "    calls.set(id, { map: map, resolve: resolve, reject: reject });\n"
    "  }\n"
    "  function startHostCall(module, fn, args) {\n"
    "    return new Promise(function (resolve, reject) { start(module, fn, args, undefined, resolve, reject); });\n"
    "  }\n"
    "\n"
    "  const sleepCall = native.sleepCall;\n"
    "\n"
    "  // One step of the loop while the handler's promise is pending and no job is left:\n"
    "  // run the earliest due timer, or sleep in the host until a timer is due or an async\n"
    "  // call completes. 1: progress (run jobs, then turn again); 0: nothing to wait for.\n"
    "  function turn() {\n"
    "    if (failed) return 0;\n"
    "    let next, nextId;\n"
    "    timers.forEach(function (t, id) {\n"
    "      if (next === undefined || t.at < next.at) { next = t; nextId = id; }\n"
    "    });\n"
    "    const time = now();\n"
    "    if (next !== undefined && next.at <= time) {\n"
    "      if (next.every) next.at = time + next.every;\n"
    "      else timers.delete(nextId);\n"
    "      try {\n"
    "        Reflect.apply(next.callback, globalThis, next.args);\n"
    "      } catch (e) {\n"
    "        fail(e);\n"
    "      }\n"
    "      return failed ? 0 : 1;\n"
    "    }\n"
    "    if (next === undefined && calls.size === 0) return 0;\n"
    "    // With no async call in flight only a timer can end the wait: `sleep`, which the\n"
    "    // KVM host serves on the vCPU thread without a round trip to its main thread (so\n"
    "    // it always exits: plat_exit_sleep); the deadline on this clock lets it leave out\n"
    "    // the time the exit took.\n"
    "    const done = calls.size === 0 ? sleepCall([next.at - time, next.at])\n"
    "                                  : hostCall('airlock:loop', 'wait', [next === undefined ? -1 : next.at - time]);\n"
    "    for (let i = 0; i < done.length; i++) {\n"
    "      const id = done[i][0], kind = done[i][1], payload = done[i][2];\n"
    "      const call = calls.get(id);\n"
    "      if (call === undefined) continue;\n"
    "      calls.delete(id);\n"
    "      if (kind === 0) {\n"
    "        let value = payload;\n"
    "        if (call.map !== undefined) {\n"
    "          try {\n"
    "            value = call.map(payload);\n"
    "          } catch (e) {\n"
    "            call.reject(e);\n"
    "            continue;\n"
    "          }\n"
    "        }\n"
    "        call.resolve(value);\n"
    "      } else {\n"
    "        call.reject(kind === 2 ? new TypeError(payload) : hostFunctionError(payload));\n"
    "      }\n"
    "    }\n"
    "    return 1;\n"
    "  }\n"
    "  function end() {\n"
    "    timers.clear();\n"
    "    calls.clear();\n"
    "    failed = false;\n"
    "  }\n"
    "\n"
    "  // fetch: the request as the host's fetch capability reads it.\n"
    "  function fetchRequest(input, init) {\n"
    "    const url = typeof input === 'string' ? input : input !== null && typeof input === 'object' && typeof input.url === 'string' ? input.url : String(input);\n"
    "    const method = init.method === undefined ? 'GET' : String(init.method);\n"
    "    const headers = [];\n"
    "    const h = init.headers;\n"
    "    if (h !== undefined && h !== null) {\n"
    "      if (typeof h.forEach === 'function' && !Array.isArray(h)) h.forEach(function (value, name) { headers.push([String(name), String(value)]); });\n"
    "      else if (Array.isArray(h)) for (let i = 0; i < h.length; i++) {\n"
    "        if (!Array.isArray(h[i]) || h[i].length !== 2) throw new TypeError('fetch: each header must be a [name, value] pair');\n"
    "        headers.push([String(h[i][0]), String(h[i][1])]);\n"
    "      }\n"
    "      else for (const name of Object.keys(h)) headers.push([name, String(h[name])]);\n"
    "    }\n"
    "    const r = { url: url, method: method, headers: headers };\n"
    "    const body = init.body;\n"
    "    if (body === undefined || body === null) return r;\n"
    "    if (typeof body === 'string') r.body = body;\n"
    "    else if (body instanceof ArrayBuffer) r.bodyBase64 = encodeBase64(body);\n"
    "    else if (ArrayBuffer.isView(body)) r.bodyBase64 = encodeBase64(new Uint8Array(body.buffer, body.byteOffset, body.byteLength).slice().buffer);\n"
    "    else if (typeof URLSearchParams === 'function' && body instanceof URLSearchParams) {\n"
    "      // As the Fetch standard extracts it: the form's text, with its content type unless one is set.\n"
    "      r.body = body.toString();\n"
    "      if (!headers.some(function (pair) { return pair[0].toLowerCase() === 'content-type'; })) headers.push(['content-type', 'application/x-www-form-urlencoded;charset=UTF-8']);\n"
    "    } else {\n"
    "      throw new TypeError('fetch: a request body must be a string, an ArrayBuffer, a typed array or DataView, or URLSearchParams (got ' + describe(body) + ')');\n"
    "    }\n"
    "    return r;\n"
    "  }\n"
    "\n"
    "  class FetchHeaders {\n"
    "    #map;\n"
    "    constructor(pairs) {\n"
    "      this.#map = new Map();\n"
    "      for (let i = 0; i < pairs.length; i++) {\n"
    "        const name = String(pairs[i][0]).toLowerCase(), value = String(pairs[i][1]);\n"
    "        const prev = this.#map.get(name);\n"
    "        this.#map.set(name, prev === undefined ? value : prev + ', ' + value);\n"
    "      }\n"
    "    }\n"
    "    get(name) { const v = this.#map.get(String(name).toLowerCase()); return v === undefined ? null : v; }\n"
    "    has(name) { return this.#map.has(String(name).toLowerCase()); }\n"
    "    forEach(callback, thisArg) { this.#map.forEach(function (v, k) { callback.call(thisArg, v, k, this); }, this); }\n"
    "    keys() { return this.#map.keys(); }\n"
    "    values() { return this.#map.values(); }\n"
    "    entries() { return this.#map.entries(); }\n"
    "    [Symbol.iterator]() { return this.#map.entries(); }\n"
    "  }\n"
    "\n"
    "  class Response {\n"
    "    #body;\n"
    "    #used = false;\n"
    "    constructor(r) {\n"
    "      this.status = r.status;\n"
    "      this.statusText = r.statusText;\n"
    "      this.ok = r.status >= 200 && r.status <= 299;\n"
    "      this.url = r.url;\n"
    "      this.redirected = r.redirected;\n"
    "      this.headers = new FetchHeaders(r.headers);\n"
    "      this.#body = r.body;\n"
    "    }\n"
    "    get bodyUsed() { return this.#used; }\n"
    "    #take() {\n"
    "      if (this.#used) return Promise.reject(new TypeError('Body is unusable: Body has already been read'));\n"
    "      this.#used = true;\n"
    "      return Promise.resolve(decodeBase64(this.#body));\n"
    "    }\n"
    "    arrayBuffer() { return this.#take(); }\n"
    "    text() { return this.#take().then(decodeUtf8); }\n"
    "    json() { return this.text().then(function (t) { return JSON.parse(t); }); }\n"
    "  }\n"
    "\n"
    "  globals.turn = turn;\n"
    "  globals.end = end;\n"
    "  globals.startHostCall = startHostCall;\n"
    "  return globals;\n"
    "})\n"
    "\n";

/* The globals the loop provides. Each is a small native function that loads the prelude
 * on first use and forwards to it: compiling the prelude costs about as much as a call,
 * and most handlers never touch a timer. */
static const char *const loop_globals[] = {"setTimeout", "setInterval", "clearTimeout", "clearInterval",
                                           "queueMicrotask", "fetch"};
static const int loop_global_lengths[] = {2, 2, 1, 1, 1, 2};

/* The prelude's entry points for the current context (one context at a time). */
static struct {
    JSContext *ctx;
    int loaded; /* the values below are set only while ctx is set and loaded */
    JSValue api, turn, end, start_host_call;
    JSValue uncaught;
    int has_uncaught;
} loop;

static JSValue js_loop_host_call(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    if (argc < 3)
        return JS_ThrowTypeError(ctx, "hostCall needs (module, function, args)");
    const char *module = JS_ToCString(ctx, argv[0]);
    const char *function = module ? JS_ToCString(ctx, argv[1]) : NULL;
    JSValue r = module && function ? runtime_host_call(ctx, module, function, argv[2]) : JS_EXCEPTION;
    JS_FreeCString(ctx, module);
    JS_FreeCString(ctx, function);
    return r;
}

static JSValue js_loop_sleep_call(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    if (argc < 1)
        return JS_ThrowTypeError(ctx, "sleepCall needs (args)");
    return runtime_sleep_call(ctx, argv[0]);
}

static JSValue js_loop_now(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    (void)argv;
    return JS_NewFloat64(ctx, (double)plat_monotonic_ns() / 1e6);
}

static JSValue js_loop_report_uncaught(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    if (!loop.has_uncaught) {
        loop.uncaught = JS_DupValue(ctx, argc > 0 ? argv[0] : JS_UNDEFINED);
        loop.has_uncaught = 1;
    }
    return JS_UNDEFINED;
}

static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Response bodies arrive from the host as base64 (JSON carries no bytes). */
static JSValue js_loop_decode_base64(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    size_t len;
    const char *text = argc > 0 ? JS_ToCStringLen(ctx, &len, argv[0]) : NULL;
    if (!text)
        return JS_EXCEPTION;
    uint8_t *bytes = js_malloc(ctx, len / 4 * 3 + 3);
    if (!bytes) {
        JS_FreeCString(ctx, text);
        return JS_EXCEPTION;
    }
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = base64_value((unsigned char)text[i]);
        if (v < 0)
            break; /* '=' padding ends the data */
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            bytes[n++] = (uint8_t)(acc >> bits);
        }
    }
    JS_FreeCString(ctx, text);
    JSValue buf = JS_NewArrayBufferCopy(ctx, bytes, n);
    js_free(ctx, bytes);
    return buf;
}

/* Binary request bodies go to the host as base64, the way response bodies come back. */
static JSValue js_loop_encode_base64(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len;
    const uint8_t *bytes = argc > 0 ? JS_GetArrayBuffer(ctx, &len, argv[0]) : NULL;
    if (!bytes)
        return JS_EXCEPTION; /* not an ArrayBuffer, or detached: JS_GetArrayBuffer threw */
    if (len > ((size_t)1 << 30))
        return JS_ThrowRangeError(ctx, "fetch: a request body over 1 GiB");
    char *text = js_malloc(ctx, (len + 2) / 3 * 4 + 1);
    if (!text)
        return JS_EXCEPTION;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 3) {
        const uint32_t a = bytes[i], b = i + 1 < len ? bytes[i + 1] : 0, c = i + 2 < len ? bytes[i + 2] : 0;
        const uint32_t triple = (a << 16) | (b << 8) | c;
        text[n++] = alphabet[(triple >> 18) & 63];
        text[n++] = alphabet[(triple >> 12) & 63];
        text[n++] = i + 1 < len ? alphabet[(triple >> 6) & 63] : '=';
        text[n++] = i + 2 < len ? alphabet[triple & 63] : '=';
    }
    JSValue out = JS_NewStringLen(ctx, text, n);
    js_free(ctx, text);
    return out;
}

static JSValue js_loop_decode_utf8(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    size_t len;
    uint8_t *bytes = argc > 0 ? JS_GetArrayBuffer(ctx, &len, argv[0]) : NULL;
    if (!bytes)
        return JS_EXCEPTION;
    return JS_NewStringLen(ctx, (const char *)bytes, len);
}

/* Compiles and runs the prelude in the current context, once. 0, or -1 with an
 * exception pending. */
static int loop_load(JSContext *ctx)
{
    if (loop.loaded)
        return 0;
    JSValue factory = JS_Eval(ctx, prelude_source, sizeof prelude_source - 1, "<airlock:eventloop>", JS_EVAL_TYPE_GLOBAL);
    if (JS_IsException(factory))
        return -1;
    JSValue natives = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, natives, "hostCall", JS_NewCFunction(ctx, js_loop_host_call, "hostCall", 3));
    JS_SetPropertyStr(ctx, natives, "sleepCall", JS_NewCFunction(ctx, js_loop_sleep_call, "sleepCall", 1));
    JS_SetPropertyStr(ctx, natives, "now", JS_NewCFunction(ctx, js_loop_now, "now", 0));
    JS_SetPropertyStr(ctx, natives, "reportUncaught", JS_NewCFunction(ctx, js_loop_report_uncaught, "reportUncaught", 1));
    JS_SetPropertyStr(ctx, natives, "decodeBase64", JS_NewCFunction(ctx, js_loop_decode_base64, "decodeBase64", 1));
    JS_SetPropertyStr(ctx, natives, "encodeBase64", JS_NewCFunction(ctx, js_loop_encode_base64, "encodeBase64", 1));
    JS_SetPropertyStr(ctx, natives, "decodeUtf8", JS_NewCFunction(ctx, js_loop_decode_utf8, "decodeUtf8", 1));
    JSValue api = JS_Call(ctx, factory, JS_UNDEFINED, 1, (JSValueConst *)&natives);
    JS_FreeValue(ctx, factory);
    JS_FreeValue(ctx, natives);
    if (JS_IsException(api))
        return -1;
    loop.api = api;
    loop.turn = JS_GetPropertyStr(ctx, api, "turn");
    loop.end = JS_GetPropertyStr(ctx, api, "end");
    loop.start_host_call = JS_GetPropertyStr(ctx, api, "startHostCall");
    loop.loaded = 1;
    return 0;
}

static JSValue js_loop_global(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv, int magic)
{
    (void)this_val;
    if (loop.ctx != ctx)
        return JS_ThrowInternalError(ctx, "the event loop is not installed in this context");
    if (loop_load(ctx) < 0)
        return JS_EXCEPTION;
    JSValue fn = JS_GetPropertyStr(ctx, loop.api, loop_globals[magic]);
    JSValue r = JS_Call(ctx, fn, JS_UNDEFINED, argc, argv);
    JS_FreeValue(ctx, fn);
    return r;
}

int eventloop_install(JSContext *ctx)
{
    JSValue global = JS_GetGlobalObject(ctx);
    int rc = 0;
    for (int i = 0; i < (int)(sizeof loop_globals / sizeof loop_globals[0]) && rc == 0; i++) {
        JSValue fn = JS_NewCFunctionMagic(ctx, js_loop_global, loop_globals[i], loop_global_lengths[i],
                                          JS_CFUNC_generic_magic, i);
        if (JS_IsException(fn) || JS_SetPropertyStr(ctx, global, loop_globals[i], fn) < 0)
            rc = -1;
    }
    JS_FreeValue(ctx, global);
    if (rc < 0) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        return -1;
    }
    loop.ctx = ctx;
    loop.loaded = 0;
    loop.has_uncaught = 0;
    return 0;
}

void eventloop_release(JSContext *ctx)
{
    if (loop.ctx != ctx)
        return;
    if (loop.loaded) {
        JS_FreeValue(ctx, loop.api);
        JS_FreeValue(ctx, loop.turn);
        JS_FreeValue(ctx, loop.end);
        JS_FreeValue(ctx, loop.start_host_call);
    }
    if (loop.has_uncaught)
        JS_FreeValue(ctx, loop.uncaught);
    loop.loaded = 0;
    loop.has_uncaught = 0;
    loop.ctx = NULL;
}

int eventloop_turn(JSContext *ctx)
{
    /* Without the prelude there is no timer and no async call to wait for. */
    if (loop.ctx != ctx || !loop.loaded || loop.has_uncaught)
        return 0;
    JSValue r = JS_Call(ctx, loop.turn, JS_UNDEFINED, 0, NULL);
    if (JS_IsException(r)) {
        /* The wait itself failed (the host refused it, or the request was interrupted):
         * the request ends with that error. */
        JSValue exc = JS_GetException(ctx);
        js_loop_report_uncaught(ctx, JS_UNDEFINED, 1, (JSValueConst *)&exc);
        JS_FreeValue(ctx, exc);
        return 0;
    }
    int32_t progress = 0;
    JS_ToInt32(ctx, &progress, r);
    JS_FreeValue(ctx, r);
    return progress > 0 && !loop.has_uncaught;
}

JSValue eventloop_take_uncaught(JSContext *ctx)
{
    if (loop.ctx != ctx || !loop.has_uncaught)
        return JS_UNINITIALIZED;
    JSValue e = loop.uncaught;
    loop.uncaught = JS_UNDEFINED;
    loop.has_uncaught = 0;
    return e;
}

void eventloop_end(JSContext *ctx)
{
    if (loop.ctx != ctx)
        return;
    if (loop.has_uncaught) {
        JS_FreeValue(ctx, loop.uncaught);
        loop.uncaught = JS_UNDEFINED;
        loop.has_uncaught = 0;
    }
    if (!loop.loaded)
        return;
    JSValue r = JS_Call(ctx, loop.end, JS_UNDEFINED, 0, NULL);
    if (JS_IsException(r))
        JS_FreeValue(ctx, JS_GetException(ctx));
    JS_FreeValue(ctx, r);
}

JSValue eventloop_start_host_call(JSContext *ctx, const char *module, const char *function, JSValueConst args)
{
    if (loop.ctx != ctx)
        return JS_ThrowInternalError(ctx, "the event loop is not installed in this context");
    if (loop_load(ctx) < 0)
        return JS_EXCEPTION;
    JSValue argv[3] = {JS_NewString(ctx, module), JS_NewString(ctx, function), JS_DupValue(ctx, args)};
    JSValue r = JS_Call(ctx, loop.start_host_call, JS_UNDEFINED, 3, (JSValueConst *)argv);
    for (int i = 0; i < 3; i++)
        JS_FreeValue(ctx, argv[i]);
    return r;
}
