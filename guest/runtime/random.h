/* random.h — the guest's random numbers: a ChaCha20 CSPRNG fed with host entropy (crypto.*)
 * and the Math.random generator seeded from it, or from a fixed seed for replay. */
#ifndef AIRLOCK_RANDOM_H
#define AIRLOCK_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* Mixes `n` bytes of host entropy into the CSPRNG and, unless Math.random is
 * deterministic, reseeds Math.random from it. Every request that carries entropy calls it,
 * so a restored or cloned guest draws new numbers after its next request. */
void random_mix_entropy(const uint8_t *entropy, size_t n);

/* Fills `out` from the CSPRNG (fast key erasure: the key is replaced at every draw). */
void random_fill(uint8_t *out, size_t n);

/* Math.random from now on: a fixed sequence from `seed` (never reseeded), or, with
 * deterministic 0, the CSPRNG-seeded generator again. */
void random_set_deterministic(int deterministic, uint64_t seed);

/* A double in [0, 1) for Math.random. */
double random_math_double(void);

#endif /* AIRLOCK_RANDOM_H */
