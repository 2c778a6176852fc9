/* crypto.c — the built-in `crypto` module: createHmac() and its Hmac objects, over our own
 * portable SHA-256/384/512 (FIPS 180-4), HMAC (RFC 2104) and hex/base64 encoders. */
#include <string.h>

#include "crypto.h"

#define countof(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------------------
 * SHA-2 (FIPS 180-4). One context shape serves both families: SHA-256 uses 32-bit
 * words and 64-byte blocks, SHA-384/512 64-bit words and 128-byte blocks. Byte order
 * is handled with shifts, never by casting memory, so the code is the same on every
 * target (x86-64 and wasm32 are both little-endian, but nothing here relies on it). */

#define HASH_MAX_BLOCK 128
#define HASH_MAX_DIGEST 64

struct hash;

struct hash_alg {
    const char *name;  /* lower case, as createHmac() matches it */
    unsigned block_len;
    unsigned digest_len;
    const void *iv;    /* 8 words of the family's width */
    void (*compress)(struct hash *c, const uint8_t *block);
};

struct hash {
    const struct hash_alg *alg;
    uint64_t bytes; /* message length so far; 2^64 bytes is out of reach */
    union {
        uint32_t w32[8];
        uint64_t w64[8];
    } h;
    uint8_t buf[HASH_MAX_BLOCK]; /* the partial block, bytes % block_len long */
};

/* First 32 bits of the fractional parts of the cube roots of the first 64 primes. */
static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

/* First 32 bits of the fractional parts of the square roots of the first 8 primes. */
static const uint32_t sha256_iv[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* First 64 bits of the fractional parts of the cube roots of the first 80 primes. */
static const uint64_t sha512_k[80] = {
    0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817,
};

/* First 64 bits of the fractional parts of the square roots of the first 8 primes. */
static const uint64_t sha512_iv[8] = {
    0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1,
    0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179,
};

/* SHA-384: the same, from the 9th to the 16th primes. */
static const uint64_t sha384_iv[8] = {
    0xcbbb9d5dc1059ed8, 0x629a292a367cd507, 0x9159015a3070dd17, 0x152fecd8f70e5939,
    0x67332667ffc00b31, 0x8eb44a8768581511, 0xdb0c2e0d64f98fa7, 0x47b5481dbefa4fa4,
};

static uint32_t ror32(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }
static uint64_t ror64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

static uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t load_be64(const uint8_t *p) { return (uint64_t)load_be32(p) << 32 | load_be32(p + 4); }

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void store_be64(uint8_t *p, uint64_t v)
{
    store_be32(p, (uint32_t)(v >> 32));
    store_be32(p + 4, (uint32_t)v);
}

static void sha256_compress(struct hash *c, const uint8_t *block)
{
    uint32_t w[64];
    for (unsigned i = 0; i < 16; i++)
        w[i] = load_be32(block + 4 * i);
    for (unsigned i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t *h = c->h.w32;
    uint32_t a = h[0], b = h[1], cc = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (unsigned i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
        uint32_t t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += cc;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

static void sha512_compress(struct hash *c, const uint8_t *block)
{
    uint64_t w[80];
    for (unsigned i = 0; i < 16; i++)
        w[i] = load_be64(block + 8 * i);
    for (unsigned i = 16; i < 80; i++) {
        uint64_t s0 = ror64(w[i - 15], 1) ^ ror64(w[i - 15], 8) ^ (w[i - 15] >> 7);
        uint64_t s1 = ror64(w[i - 2], 19) ^ ror64(w[i - 2], 61) ^ (w[i - 2] >> 6);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint64_t *h = c->h.w64;
    uint64_t a = h[0], b = h[1], cc = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (unsigned i = 0; i < 80; i++) {
        uint64_t t1 = hh + (ror64(e, 14) ^ ror64(e, 18) ^ ror64(e, 41)) + ((e & f) ^ (~e & g)) + sha512_k[i] + w[i];
        uint64_t t2 = (ror64(a, 28) ^ ror64(a, 34) ^ ror64(a, 39)) + ((a & b) ^ (a & cc) ^ (b & cc));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += cc;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

static const struct hash_alg hash_algs[] = {
    {"sha256", 64, 32, sha256_iv, sha256_compress},
    {"sha384", 128, 48, sha384_iv, sha512_compress},
    {"sha512", 128, 64, sha512_iv, sha512_compress},
};

static void hash_init(struct hash *c, const struct hash_alg *alg)
{
    c->alg = alg;
    c->bytes = 0;
    memcpy(&c->h, alg->iv, alg->block_len == 64 ? sizeof c->h.w32 : sizeof c->h.w64);
}

static void hash_update(struct hash *c, const uint8_t *p, size_t n)
{
    size_t block = c->alg->block_len;
    size_t used = (size_t)(c->bytes % block);
    c->bytes += n;
    if (used) {
        size_t take = block - used < n ? block - used : n;
        memcpy(c->buf + used, p, take);
        p += take;
        n -= take;
        if (used + take < block)
            return;
        c->alg->compress(c, c->buf);
    }
    for (; n >= block; p += block, n -= block)
        c->alg->compress(c, p);
    memcpy(c->buf, p, n);
}

/* Pads (0x80, zeros, the bit length in the last 8 or 16 bytes) and writes the digest.
 * The context is spent afterwards. */
static void hash_final(struct hash *c, uint8_t *out)
{
    size_t block = c->alg->block_len;
    size_t length_field = block / 8; /* 8 bytes for SHA-256, 16 for SHA-384/512 */
    size_t used = (size_t)(c->bytes % block);
    c->buf[used++] = 0x80;
    if (used > block - length_field) {
        memset(c->buf + used, 0, block - used);
        c->alg->compress(c, c->buf);
        used = 0;
    }
    memset(c->buf + used, 0, block - used);
    store_be64(c->buf + block - 8, c->bytes << 3);
    if (length_field == 16)
        store_be64(c->buf + block - 16, c->bytes >> 61);
    c->alg->compress(c, c->buf);
    if (block == 64) {
        for (unsigned i = 0; i < c->alg->digest_len / 4; i++)
            store_be32(out + 4 * i, c->h.w32[i]);
    } else {
        for (unsigned i = 0; i < c->alg->digest_len / 8; i++)
            store_be64(out + 8 * i, c->h.w64[i]);
    }
}

/* ---------------------------------------------------------------------------
 * HMAC (RFC 2104): H((K0 ^ opad) || H((K0 ^ ipad) || message)). The hash states after
 * the two padded key blocks are kept, so each new MAC with the same key starts from a
 * copy instead of rehashing the key. */

struct hmac {
    struct hash inner_start; /* after K0 ^ ipad */
    struct hash outer_start; /* after K0 ^ opad */
    struct hash inner;       /* inner_start plus the message so far */
    uint8_t mac[HASH_MAX_DIGEST];
    int finalized;           /* mac holds the MAC of the message so far */
};

/* Where key bytes go: copied into the key block while they fit, else hashed. */
struct key_sink {
    struct hash hash;
    uint8_t *block;
    size_t len;
    int hashing;
};

static void key_sink_write(void *opaque, const uint8_t *p, size_t n)
{
    struct key_sink *k = opaque;
    if (k->hashing) {
        hash_update(&k->hash, p, n);
    } else {
        memcpy(k->block + k->len, p, n);
        k->len += n;
    }
}

static void hash_sink_write(void *opaque, const uint8_t *p, size_t n) { hash_update(opaque, p, n); }

/* ---------------------------------------------------------------------------
 * Bytes of a JS value: a string (UTF-8), an ArrayBuffer, a typed array or a DataView. */

struct bytes {
    const uint8_t *p;
    size_t n;
    const char *str; /* the JS C string to release, when the value was a string */
};

typedef void byte_sink(void *opaque, const uint8_t *p, size_t n);

/* QuickJS's UTF-8 keeps an unpaired surrogate as its own 3-byte sequence (ED A0..BF xx);
 * Node and TextEncoder encode it as U+FFFD (EF BF BD) instead. Strings are fed with that
 * replacement so a MAC over such a string matches Node's; both forms are 3 bytes, so the
 * length a caller computed beforehand still holds. */
static void bytes_feed(const struct bytes *b, byte_sink *sink, void *opaque)
{
    static const uint8_t replacement[3] = {0xef, 0xbf, 0xbd};
    size_t start = 0;
    if (b->str) {
        /* ED is always a lead byte; after ED, A0..BF (rather than 80..9F) is a surrogate. */
        for (size_t i = 0; i + 2 < b->n; i++) {
            if (b->p[i] == 0xed && b->p[i + 1] >= 0xa0) {
                sink(opaque, b->p + start, i - start);
                sink(opaque, replacement, 3);
                i += 2;
                start = i + 1;
            }
        }
    }
    sink(opaque, b->p + start, b->n - start);
}

/* The engine's built-in class ids are not exported by quickjs.h, so they are learned
 * once from sample objects. Class ids are fixed for the engine build, hence static. */
static struct {
    int known;
    JSClassID array_buffer;
    JSClassID data_view;
    JSClassID typed[JS_TYPED_ARRAY_FLOAT64 + 1];
} view_classes;

/* 0, or -1 with an exception pending (out of memory, or a DataView constructor that
 * user code replaced so that it throws). */
static int view_classes_learn(JSContext *ctx)
{
    if (view_classes.known)
        return 0;
    static const uint8_t none[1];
    JSValue ab = JS_NewArrayBufferCopy(ctx, none, 0);
    if (JS_IsException(ab))
        return -1;
    JSClassID array_buffer = JS_GetClassID(ab);
    JSClassID typed[JS_TYPED_ARRAY_FLOAT64 + 1];
    for (int t = JS_TYPED_ARRAY_UINT8C; t <= JS_TYPED_ARRAY_FLOAT64; t++) {
        JSValue zero = JS_NewInt32(ctx, 0);
        JSValue ta = JS_NewTypedArray(ctx, 1, &zero, (JSTypedArrayEnum)t);
        if (JS_IsException(ta)) {
            JS_FreeValue(ctx, ab);
            return -1;
        }
        typed[t] = JS_GetClassID(ta);
        JS_FreeValue(ctx, ta);
    }
    /* No C API makes a DataView: use the global constructor. If user code replaced it
     * the id learnt may be another class's; those objects then go through the DataView
     * path, which checks every offset against the real buffer, so it stays memory-safe. */
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue ctor = JS_GetPropertyStr(ctx, global, "DataView");
    JS_FreeValue(ctx, global);
    JSValue dv = JS_IsException(ctor) ? JS_EXCEPTION : JS_CallConstructor(ctx, ctor, 1, (JSValueConst *)&ab);
    JS_FreeValue(ctx, ctor);
    JS_FreeValue(ctx, ab);
    if (JS_IsException(dv))
        return -1;
    view_classes.data_view = JS_GetClassID(dv);
    JS_FreeValue(ctx, dv);
    view_classes.array_buffer = array_buffer;
    memcpy(view_classes.typed, typed, sizeof typed);
    view_classes.known = 1;
    return 0;
}

static int is_typed_array_class(JSClassID id)
{
    for (size_t i = 0; i < countof(view_classes.typed); i++)
        if (view_classes.typed[i] == id)
            return 1;
    return 0;
}

/* Points b at data[offset, +length). An empty view may have no data pointer at all:
 * point it at a static byte instead, so no NULL pointer reaches arithmetic or memcpy. */
static int bytes_set(struct bytes *b, const uint8_t *data, size_t offset, size_t length)
{
    static const uint8_t empty[1];
    b->p = length ? data + offset : empty;
    b->n = length;
    return 0;
}

/* Bytes of a DataView, read through its byteOffset/byteLength/buffer accessors (no C
 * API exposes them). Those run JS, so the buffer pointer is fetched last and the range
 * is checked against the buffer's real size. */
static int data_view_bytes(JSContext *ctx, JSValueConst v, struct bytes *b)
{
    uint64_t offset, length;
    JSValue off_v = JS_GetPropertyStr(ctx, v, "byteOffset");
    int rc = JS_ToIndex(ctx, &offset, off_v);
    JS_FreeValue(ctx, off_v);
    if (rc < 0)
        return -1;
    JSValue len_v = JS_GetPropertyStr(ctx, v, "byteLength");
    rc = JS_ToIndex(ctx, &length, len_v);
    JS_FreeValue(ctx, len_v);
    if (rc < 0)
        return -1;
    JSValue buffer = JS_GetPropertyStr(ctx, v, "buffer");
    if (JS_IsException(buffer))
        return -1;
    size_t size;
    uint8_t *data = JS_GetArrayBuffer(ctx, &size, buffer);
    JS_FreeValue(ctx, buffer);
    if (!data && JS_HasException(ctx)) /* not an ArrayBuffer, or detached */
        return -1;
    if (offset > size || length > size - offset) {
        JS_ThrowRangeError(ctx, "DataView range is outside its buffer");
        return -1;
    }
    return bytes_set(b, data, (size_t)offset, (size_t)length);
}

/* Fills b with the bytes of v. 0, or -1 with an exception pending. `what` names the
 * argument in the TypeError for other types. The bytes stay valid until JS runs. */
static int bytes_get(JSContext *ctx, JSValueConst v, const char *what, struct bytes *b)
{
    memset(b, 0, sizeof *b);
    if (JS_IsString(v)) {
        const char *s = JS_ToCStringLen(ctx, &b->n, v);
        if (!s)
            return -1;
        b->str = s;
        b->p = (const uint8_t *)s;
        return 0;
    }
    if (JS_IsObject(v)) {
        JSClassID id = JS_GetClassID(v);
        size_t size;
        if (id == view_classes.array_buffer) {
            uint8_t *data = JS_GetArrayBuffer(ctx, &size, v); /* throws when detached */
            if (!data && JS_HasException(ctx))
                return -1;
            return bytes_set(b, data, 0, size);
        }
        if (is_typed_array_class(id)) {
            size_t offset, length;
            JSValue buffer = JS_GetTypedArrayBuffer(ctx, v, &offset, &length, NULL); /* throws when detached */
            if (JS_IsException(buffer))
                return -1;
            uint8_t *data = JS_GetArrayBuffer(ctx, &size, buffer);
            JS_FreeValue(ctx, buffer);
            if (!data && JS_HasException(ctx))
                return -1;
            if (offset > size || length > size - offset) {
                JS_ThrowRangeError(ctx, "typed array range is outside its buffer");
                return -1;
            }
            return bytes_set(b, data, offset, length);
        }
        if (id == view_classes.data_view)
            return data_view_bytes(ctx, v, b);
    }
    JS_ThrowTypeError(ctx, "The \"%s\" argument must be a string, ArrayBuffer, typed array or DataView", what);
    return -1;
}

static void bytes_release(JSContext *ctx, struct bytes *b)
{
    if (b->str)
        JS_FreeCString(ctx, b->str);
    b->str = NULL;
}

/* ---------------------------------------------------------------------------
 * HMAC over JS values */

static void hmac_init(struct hmac *m, const struct hash_alg *alg, const struct bytes *key)
{
    uint8_t k0[HASH_MAX_BLOCK] = {0};
    struct key_sink sink = {.block = k0, .hashing = key->n > alg->block_len};
    /* A key longer than a block is replaced by its hash (RFC 2104 §2). */
    if (sink.hashing)
        hash_init(&sink.hash, alg);
    bytes_feed(key, key_sink_write, &sink);
    if (sink.hashing)
        hash_final(&sink.hash, k0);
    uint8_t pad[HASH_MAX_BLOCK];
    for (unsigned i = 0; i < alg->block_len; i++)
        pad[i] = k0[i] ^ 0x36;
    hash_init(&m->inner_start, alg);
    hash_update(&m->inner_start, pad, alg->block_len);
    for (unsigned i = 0; i < alg->block_len; i++)
        pad[i] = k0[i] ^ 0x5c;
    hash_init(&m->outer_start, alg);
    hash_update(&m->outer_start, pad, alg->block_len);
    m->inner = m->inner_start;
    m->finalized = 0;
}

static void hmac_finish(struct hmac *m)
{
    if (m->finalized)
        return;
    uint8_t inner_digest[HASH_MAX_DIGEST];
    struct hash outer = m->outer_start;
    hash_final(&m->inner, inner_digest);
    hash_update(&outer, inner_digest, outer.alg->digest_len);
    hash_final(&outer, m->mac);
    m->finalized = 1;
}

/* ---------------------------------------------------------------------------
 * Encoders */

static const char hex_digits[] = "0123456789abcdef";
static const char base64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char base64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* out needs 2 * n bytes. Returns the length written. */
static size_t encode_hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex_digits[p[i] >> 4];
        out[2 * i + 1] = hex_digits[p[i] & 15];
    }
    return 2 * n;
}

/* out needs 4 * ceil(n / 3) bytes. `pad` adds '=' to whole quanta (standard base64);
 * base64url as Node writes it has none. Returns the length written. */
static size_t encode_base64(const uint8_t *p, size_t n, const char *alphabet, int pad, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = alphabet[(v >> 6) & 63];
        else if (pad)
            out[o++] = '=';
        if (pad)
            out[o++] = '=';
    }
    return o;
}

/* ---------------------------------------------------------------------------
 * The Hmac class and the module */

static JSClassID hmac_class_id;

static void hmac_finalizer(JSRuntime *rt, JSValue val)
{
    /* Allocated with js_malloc, so the JS heap accounts for it: free it the same way. */
    js_free_rt(rt, JS_GetOpaque(val, hmac_class_id));
}

static const JSClassDef hmac_class = {
    .class_name = "Hmac",
    .finalizer = hmac_finalizer,
};

/* ASCII case-insensitive equality of a (len bytes, may hold NULs) with NUL-terminated b. */
static int name_equals(const char *a, size_t len, const char *b)
{
    size_t i = 0;
    for (; i < len && b[i]; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != b[i])
            return 0;
    }
    return i == len && b[i] == '\0';
}

/* Throws TypeError `<what>: "<v>"`. Only primitives are converted (no user code runs);
 * objects and symbols are named by kind. */
static JSValue throw_unsupported(JSContext *ctx, const char *what, JSValueConst v)
{
    if (JS_IsObject(v))
        return JS_ThrowTypeError(ctx, "%s: expected a string, got an object", what);
    if (JS_IsSymbol(v))
        return JS_ThrowTypeError(ctx, "%s: expected a string, got a symbol", what);
    const char *s = JS_ToCString(ctx, v);
    if (!s)
        return JS_EXCEPTION;
    JS_ThrowTypeError(ctx, "%s: \"%s\"", what, s);
    JS_FreeCString(ctx, s);
    return JS_EXCEPTION;
}

/* Returns the algorithm named by the string v (case-insensitive), or NULL. */
static const struct hash_alg *alg_lookup(JSContext *ctx, JSValueConst v)
{
    if (!JS_IsString(v))
        return NULL;
    size_t len;
    const char *s = JS_ToCStringLen(ctx, &len, v);
    if (!s)
        return NULL;
    const struct hash_alg *found = NULL;
    for (size_t i = 0; i < countof(hash_algs) && !found; i++)
        if (name_equals(s, len, hash_algs[i].name))
            found = &hash_algs[i];
    JS_FreeCString(ctx, s);
    return found;
}

/* createHmac(algorithm, key) */
static JSValue js_create_hmac(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    JSValueConst alg_v = argc > 0 ? argv[0] : JS_UNDEFINED;
    JSValueConst key_v = argc > 1 ? argv[1] : JS_UNDEFINED;
    const struct hash_alg *alg = alg_lookup(ctx, alg_v);
    if (!alg) {
        if (JS_HasException(ctx)) /* out of memory converting the name */
            return JS_EXCEPTION;
        return throw_unsupported(ctx, "Invalid algorithm", alg_v);
    }
    struct hmac *m = js_malloc(ctx, sizeof *m);
    if (!m)
        return JS_EXCEPTION;
    JSValue obj = JS_NewObjectClass(ctx, (int)hmac_class_id);
    if (JS_IsException(obj)) {
        js_free(ctx, m);
        return obj;
    }
    /* The key is read last: a DataView's accessors run JS, and nothing may run between
     * reading the bytes and hashing them. */
    struct bytes key;
    if (bytes_get(ctx, key_v, "key", &key) < 0) {
        js_free(ctx, m);
        JS_FreeValue(ctx, obj);
        return JS_EXCEPTION;
    }
    hmac_init(m, alg, &key);
    bytes_release(ctx, &key);
    JS_SetOpaque(obj, m);
    return obj;
}

/* hmac.update(data): appends data; after a digest, starts a new MAC with the same key. */
static JSValue js_hmac_update(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    if (!JS_GetOpaque2(ctx, this_val, hmac_class_id))
        return JS_EXCEPTION;
    struct bytes data;
    if (bytes_get(ctx, argc > 0 ? argv[0] : JS_UNDEFINED, "data", &data) < 0)
        return JS_EXCEPTION;
    struct hmac *m = JS_GetOpaque(this_val, hmac_class_id);
    if (m->finalized) {
        m->inner = m->inner_start;
        m->finalized = 0;
    }
    bytes_feed(&data, hash_sink_write, &m->inner);
    bytes_release(ctx, &data);
    return JS_DupValue(ctx, this_val);
}

/* hmac.finalize(): computes the MAC of what was given so far. */
static JSValue js_hmac_finalize(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    struct hmac *m = JS_GetOpaque2(ctx, this_val, hmac_class_id);
    if (!m)
        return JS_EXCEPTION;
    hmac_finish(m);
    return JS_DupValue(ctx, this_val);
}

enum digest_format { FORMAT_HEX, FORMAT_BASE64, FORMAT_BASE64URL, FORMAT_NONE };

/* hmac.digest(format): the MAC as 'hex', 'base64' or 'base64url' (unpadded). */
static JSValue js_hmac_digest(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    static const char *const names[] = {"hex", "base64", "base64url"};
    struct hmac *m = JS_GetOpaque2(ctx, this_val, hmac_class_id);
    if (!m)
        return JS_EXCEPTION;
    JSValueConst format_v = argc > 0 ? argv[0] : JS_UNDEFINED;
    enum digest_format format = FORMAT_NONE;
    if (JS_IsString(format_v)) {
        size_t len;
        const char *s = JS_ToCStringLen(ctx, &len, format_v);
        if (!s)
            return JS_EXCEPTION;
        for (unsigned i = 0; i < countof(names) && format == FORMAT_NONE; i++)
            if (name_equals(s, len, names[i]))
                format = (enum digest_format)i;
        JS_FreeCString(ctx, s);
    }
    if (format == FORMAT_NONE)
        return throw_unsupported(ctx, "Unsupported format", format_v);
    hmac_finish(m);
    size_t n = m->inner.alg->digest_len;
    char text[2 * HASH_MAX_DIGEST]; /* hex is the longest of the three */
    size_t len;
    switch (format) {
    case FORMAT_HEX:
        len = encode_hex(m->mac, n, text);
        break;
    case FORMAT_BASE64:
        len = encode_base64(m->mac, n, base64_std, 1, text);
        break;
    default:
        len = encode_base64(m->mac, n, base64_url, 0, text);
        break;
    }
    return JS_NewStringLen(ctx, text, len);
}

static const JSCFunctionListEntry hmac_proto_funcs[] = {
    JS_CFUNC_DEF("update", 1, js_hmac_update),
    JS_CFUNC_DEF("finalize", 0, js_hmac_finalize),
    JS_CFUNC_DEF("digest", 1, js_hmac_digest),
    JS_PROP_STRING_DEF("[Symbol.toStringTag]", "Hmac", JS_PROP_CONFIGURABLE),
};

/* Runs when a context first evaluates the module: class prototypes are per context. */
static int crypto_module_init(JSContext *ctx, JSModuleDef *m)
{
    JSValue proto = JS_NewObject(ctx);
    if (JS_IsException(proto))
        return -1;
    JS_SetPropertyFunctionList(ctx, proto, hmac_proto_funcs, countof(hmac_proto_funcs));
    JS_SetClassProto(ctx, hmac_class_id, proto);
    JSValue fn = JS_NewCFunction(ctx, js_create_hmac, "createHmac", 2);
    if (JS_IsException(fn))
        return -1;
    return JS_SetModuleExport(ctx, m, "createHmac", fn);
}

JSModuleDef *crypto_module_new(JSContext *ctx, const char *name)
{
    JSRuntime *rt = JS_GetRuntime(ctx);
    JS_NewClassID(&hmac_class_id);
    if (!JS_IsRegisteredClass(rt, hmac_class_id) && JS_NewClass(rt, hmac_class_id, &hmac_class) < 0) {
        JS_ThrowOutOfMemory(ctx);
        return NULL;
    }
    if (view_classes_learn(ctx) < 0)
        return NULL;
    JSModuleDef *m = JS_NewCModule(ctx, name, crypto_module_init);
    if (!m || JS_AddModuleExport(ctx, m, "createHmac") < 0)
        return NULL;
    return m;
}
