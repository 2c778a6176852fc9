/* random.c — the guest's random numbers: a ChaCha20 fast-key-erasure CSPRNG keyed from host
 * entropy, and xorshift128+ for Math.random (what QuickJS itself uses), seeded from the
 * CSPRNG after every mix of entropy, or once from a fixed seed for deterministic replay. */
#include <string.h>

#include "random.h"

static struct {
    uint8_t key[32];
    uint64_t math_state[2];
    int deterministic;
} rng;

static uint32_t rotl32(uint32_t x, unsigned n) { return (x << n) | (x >> (32 - n)); }

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

#define QUARTER(a, b, c, d)                                                                                            \
    do {                                                                                                               \
        a += b; d ^= a; d = rotl32(d, 16);                                                                             \
        c += d; b ^= c; b = rotl32(b, 12);                                                                             \
        a += b; d ^= a; d = rotl32(d, 8);                                                                              \
        c += d; b ^= c; b = rotl32(b, 7);                                                                              \
    } while (0)

/* One 64-byte ChaCha20 block (RFC 8439) of `key` at block `counter`, nonce zero: each key
 * is used for one draw only, so a fixed nonce never repeats a (key, nonce) pair. */
static void chacha20_block(const uint8_t key[32], uint32_t counter, uint8_t out[64])
{
    uint32_t s[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
    for (int i = 0; i < 8; i++)
        s[4 + i] = load_le32(key + 4 * i);
    s[12] = counter;
    s[13] = s[14] = s[15] = 0;
    uint32_t x[16];
    memcpy(x, s, sizeof x);
    for (int i = 0; i < 10; i++) {
        QUARTER(x[0], x[4], x[8], x[12]);
        QUARTER(x[1], x[5], x[9], x[13]);
        QUARTER(x[2], x[6], x[10], x[14]);
        QUARTER(x[3], x[7], x[11], x[15]);
        QUARTER(x[0], x[5], x[10], x[15]);
        QUARTER(x[1], x[6], x[11], x[12]);
        QUARTER(x[2], x[7], x[8], x[13]);
        QUARTER(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++)
        store_le32(out + 4 * i, x[i] + s[i]);
}

void random_fill(uint8_t *out, size_t n)
{
    uint8_t block[64];
    uint32_t counter = 0;
    chacha20_block(rng.key, counter++, block);
    /* The first 32 bytes become the next key before any output leaves: an attacker who
     * reads guest memory later cannot recover what was drawn before. */
    uint8_t next_key[32];
    memcpy(next_key, block, 32);
    size_t take = n < 32 ? n : 32;
    memcpy(out, block + 32, take);
    size_t done = take;
    while (done < n) {
        chacha20_block(rng.key, counter++, block);
        take = n - done < 64 ? n - done : 64;
        memcpy(out + done, block, take);
        done += take;
    }
    memcpy(rng.key, next_key, 32);
    memset(block, 0, sizeof block);
    memset(next_key, 0, sizeof next_key);
}

static void math_seed(uint64_t a, uint64_t b)
{
    /* xorshift128+ must not start from all zeroes. */
    rng.math_state[0] = a ? a : 0x9e3779b97f4a7c15ull;
    rng.math_state[1] = b ? b : 0xbf58476d1ce4e5b9ull;
}

static void math_seed_from_csprng(void)
{
    uint64_t s[2];
    random_fill((uint8_t *)s, sizeof s);
    math_seed(s[0], s[1]);
}

void random_mix_entropy(const uint8_t *entropy, size_t n)
{
    uint8_t mixed[32];
    memcpy(mixed, rng.key, 32);
    for (size_t i = 0; i < n; i++)
        mixed[i % 32] ^= entropy[i];
    uint8_t block[64];
    chacha20_block(mixed, 0, block);
    memcpy(rng.key, block, 32);
    memset(block, 0, sizeof block);
    memset(mixed, 0, sizeof mixed);
    if (!rng.deterministic)
        math_seed_from_csprng();
}

void random_set_deterministic(int deterministic, uint64_t seed)
{
    rng.deterministic = deterministic;
    if (deterministic) {
        /* splitmix64 spreads a small seed over both words. */
        uint64_t words[2];
        for (int i = 0; i < 2; i++) {
            uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
            words[i] = z ^ (z >> 31);
        }
        math_seed(words[0], words[1]);
    } else {
        math_seed_from_csprng();
    }
}

double random_math_double(void)
{
    uint64_t s1 = rng.math_state[0];
    const uint64_t s0 = rng.math_state[1];
    rng.math_state[0] = s0;
    s1 ^= s1 << 23;
    rng.math_state[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    /* 53 random bits: every double in [0, 1) with that spacing is equally likely. */
    return (double)((rng.math_state[1] + s0) >> 11) * 0x1.0p-53;
}
