/* alloc.c — the guest heap: a boundary-tag allocator with segregated free lists
 * (exact 16-byte classes below 1 KiB, four bins per power of two above), immediate
 * coalescing, and a "top" region carved upwards from the start of the arena so the
 * touched part of the heap (what a snapshot must copy) stays as low as possible.
 *
 * Chunk layout (every chunk address and size is a multiple of 16):
 *   c + 0   prev_size  size of the previous chunk; valid only while that chunk is free
 *   c + 8   head       size | INUSE | PREV_INUSE
 *   c + 16  payload    (free chunks keep their list links here)
 * An in-use chunk's payload runs to c + size + 8, i.e. over the next chunk's
 * prev_size word, which is only meaningful while this chunk is free.
 * Invariants: no two free chunks are adjacent; the chunk just below `top` is in use
 * (a chunk freed next to top is merged into top); chunks lie in [arena, top_limit). */
#include "alloc.h"

#include <string.h>

#define ALIGNMENT 16u
#define MIN_CHUNK 32u
#define CHUNK_OVERHEAD 8u /* the head word; prev_size lives in the previous payload */
#define PREV_INUSE ((size_t)1)
#define INUSE ((size_t)2)
#define FLAG_MASK ((size_t)15)

#define SMALL_LIMIT 1024u /* chunk sizes below this have an exact bin each */
#define NUM_SMALL_BINS (SMALL_LIMIT / ALIGNMENT)
#define NUM_BINS (NUM_SMALL_BINS + 4 * 54)
#define BITMAP_WORDS ((NUM_BINS + 63) / 64)
#define LARGE_BIN_SCAN 32 /* chunks examined for a best fit in the request's own bin */

struct chunk {
    size_t prev_size;
    size_t head;
    struct chunk *next_free; /* only while free */
    struct chunk *prev_free; /* only while free */
};

static struct {
    uintptr_t start;     /* first chunk address */
    uintptr_t top;       /* [top, top_limit) has never been split into chunks */
    uintptr_t top_limit; /* a chunk ending here still has its 8 tail bytes in the arena */
    uintptr_t high_water;
    size_t in_use;
    struct chunk *bins[NUM_BINS];
    uint64_t bitmap[BITMAP_WORDS];
} heap;

static inline size_t chunk_size(const struct chunk *c) { return c->head & ~FLAG_MASK; }

/* Invariant: `addr` is a chunk boundary inside the arena (derived from chunk sizes). */
static inline struct chunk *chunk_at(uintptr_t addr) { return (struct chunk *)addr; }

static inline struct chunk *payload_chunk(const void *p) { return chunk_at((uintptr_t)p - 2 * sizeof(size_t)); }

static inline void *chunk_payload(struct chunk *c) { return (char *)c + 2 * sizeof(size_t); }

static unsigned bin_index(size_t size)
{
    if (size < SMALL_LIMIT)
        return (unsigned)(size / ALIGNMENT);
    unsigned lg = 63u - (unsigned)__builtin_clzll((unsigned long long)size);
    unsigned sub = (unsigned)(size >> (lg - 2)) & 3u;
    unsigned idx = NUM_SMALL_BINS + (lg - 10u) * 4u + sub;
    return idx < NUM_BINS ? idx : NUM_BINS - 1;
}

static void bin_insert(struct chunk *c)
{
    unsigned idx = bin_index(chunk_size(c));
    struct chunk *first = heap.bins[idx];
    c->prev_free = NULL;
    c->next_free = first;
    if (first)
        first->prev_free = c;
    heap.bins[idx] = c;
    heap.bitmap[idx / 64] |= (uint64_t)1 << (idx % 64);
}

static void bin_remove(struct chunk *c)
{
    unsigned idx = bin_index(chunk_size(c));
    if (c->prev_free)
        c->prev_free->next_free = c->next_free;
    else
        heap.bins[idx] = c->next_free;
    if (c->next_free)
        c->next_free->prev_free = c->prev_free;
    if (!heap.bins[idx])
        heap.bitmap[idx / 64] &= ~((uint64_t)1 << (idx % 64));
}

/* First non-empty bin with index > idx, or NUM_BINS. */
static unsigned next_nonempty_bin(unsigned idx)
{
    unsigned i = idx + 1;
    while (i < NUM_BINS) {
        uint64_t word = heap.bitmap[i / 64] >> (i % 64);
        if (word)
            return i + (unsigned)__builtin_ctzll(word);
        i = (i / 64 + 1) * 64;
    }
    return NUM_BINS;
}

/* Chunk size for a request of n bytes; 0 when n is absurd. */
static size_t request_size(size_t n)
{
    if (n > SIZE_MAX / 2)
        return 0;
    size_t s = (n + CHUNK_OVERHEAD + ALIGNMENT - 1) & ~(size_t)(ALIGNMENT - 1);
    return s < MIN_CHUNK ? MIN_CHUNK : s;
}

static void note_high_water(uintptr_t end)
{
    if (end > heap.high_water)
        heap.high_water = end;
}

int airlock_alloc_init(void *base, size_t size)
{
    uintptr_t lo = ((uintptr_t)base + ALIGNMENT - 1) & ~(uintptr_t)(ALIGNMENT - 1);
    uintptr_t end = (uintptr_t)base + size;
    memset(&heap, 0, sizeof heap);
    if (end < lo || end - lo < 4 * MIN_CHUNK)
        return -1;
    heap.start = lo;
    heap.top = lo;
    heap.top_limit = (end - CHUNK_OVERHEAD) & ~(uintptr_t)(ALIGNMENT - 1);
    heap.high_water = lo;
    return 0;
}

/* Marks a free chunk `c` (already out of its bin) in use with `size` bytes, returning
 * any tail of at least MIN_CHUNK bytes to the bins. */
static void take_chunk(struct chunk *c, size_t size)
{
    size_t have = chunk_size(c);
    size_t prev_flag = c->head & PREV_INUSE;
    if (have - size >= MIN_CHUNK) {
        struct chunk *rest = chunk_at((uintptr_t)c + size);
        size_t rest_size = have - size;
        rest->head = rest_size | PREV_INUSE;
        /* The chunk after `rest` already has PREV_INUSE clear: `c` was free. */
        chunk_at((uintptr_t)rest + rest_size)->prev_size = rest_size;
        bin_insert(rest);
        c->head = size | INUSE | prev_flag;
    } else {
        c->head = have | INUSE | prev_flag;
        /* Invariant: a free chunk is never next to top, so a real chunk follows. */
        chunk_at((uintptr_t)c + have)->head |= PREV_INUSE;
    }
    heap.in_use += chunk_size(c);
}

void *airlock_malloc(size_t n)
{
    size_t size = request_size(n);
    if (size == 0)
        return NULL;
    unsigned idx = bin_index(size);
    struct chunk *found = NULL;
    if (idx < NUM_SMALL_BINS) {
        found = heap.bins[idx];
    } else {
        size_t best_size = SIZE_MAX;
        int scanned = 0;
        for (struct chunk *c = heap.bins[idx]; c && scanned < LARGE_BIN_SCAN; c = c->next_free, scanned++) {
            size_t cs = chunk_size(c);
            if (cs >= size && cs < best_size) {
                found = c;
                best_size = cs;
                if (cs == size)
                    break;
            }
        }
    }
    if (!found) {
        unsigned j = next_nonempty_bin(idx);
        if (j < NUM_BINS)
            found = heap.bins[j]; /* every chunk in a higher bin is larger than `size` */
    }
    if (found) {
        bin_remove(found);
        take_chunk(found, size);
        return chunk_payload(found);
    }
    if (heap.top_limit - heap.top < size)
        return NULL;
    struct chunk *c = chunk_at(heap.top);
    c->head = size | INUSE | PREV_INUSE; /* invariant: the chunk below top is in use */
    heap.top += size;
    note_high_water(heap.top + CHUNK_OVERHEAD);
    heap.in_use += size;
    return chunk_payload(c);
}

/* Frees an in-use chunk, coalescing with free neighbours and with top. */
static void release_chunk(struct chunk *c)
{
    size_t size = chunk_size(c);
    heap.in_use -= size;
    struct chunk *next = chunk_at((uintptr_t)c + size);
    if (!(c->head & PREV_INUSE)) {
        struct chunk *prev = chunk_at((uintptr_t)c - c->prev_size);
        bin_remove(prev);
        size += chunk_size(prev);
        c = prev;
    }
    if ((uintptr_t)next == heap.top) {
        heap.top = (uintptr_t)c;
        return;
    }
    if (!(next->head & INUSE)) {
        bin_remove(next);
        size += chunk_size(next);
    } else {
        next->head &= ~PREV_INUSE;
    }
    /* Invariant: free chunks are never adjacent, so whatever precedes `c` is in use. */
    c->head = size | PREV_INUSE;
    chunk_at((uintptr_t)c + size)->prev_size = size;
    bin_insert(c);
}

void airlock_free(void *p)
{
    if (p)
        release_chunk(payload_chunk(p));
}

size_t airlock_usable_size(const void *p)
{
    return p ? chunk_size(payload_chunk(p)) - CHUNK_OVERHEAD : 0;
}

void *airlock_calloc(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    void *p = airlock_malloc(count * size);
    /* Never-used arena bytes are not zero after a snapshot restore: always clear. */
    if (p)
        memset(p, 0, count * size);
    return p;
}

/* Shrinks in-use chunk `c` to `size` bytes when the tail is worth a chunk. */
static void trim_chunk(struct chunk *c, size_t size)
{
    size_t have = chunk_size(c);
    if (have - size < MIN_CHUNK)
        return;
    c->head = size | (c->head & FLAG_MASK);
    struct chunk *tail = chunk_at((uintptr_t)c + size);
    tail->head = (have - size) | INUSE | PREV_INUSE;
    release_chunk(tail); /* takes the tail's bytes off heap.in_use */
}

void *airlock_realloc(void *p, size_t n)
{
    if (!p)
        return airlock_malloc(n);
    if (n == 0) {
        airlock_free(p);
        return NULL;
    }
    size_t size = request_size(n);
    if (size == 0)
        return NULL;
    struct chunk *c = payload_chunk(p);
    size_t have = chunk_size(c);
    if (size <= have) {
        trim_chunk(c, size);
        return p;
    }
    uintptr_t next_addr = (uintptr_t)c + have;
    if (next_addr == heap.top) {
        if (heap.top_limit - (uintptr_t)c >= size) {
            c->head = size | (c->head & FLAG_MASK);
            heap.top = (uintptr_t)c + size;
            note_high_water(heap.top + CHUNK_OVERHEAD);
            heap.in_use += size - have;
            return p;
        }
    } else {
        struct chunk *next = chunk_at(next_addr);
        if (!(next->head & INUSE) && have + chunk_size(next) >= size) {
            bin_remove(next);
            size_t total = have + chunk_size(next);
            c->head = total | (c->head & FLAG_MASK);
            chunk_at((uintptr_t)c + total)->head |= PREV_INUSE;
            heap.in_use += total - have;
            trim_chunk(c, size);
            return p;
        }
    }
    void *q = airlock_malloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, have - CHUNK_OVERHEAD);
    airlock_free(p);
    return q;
}

void *airlock_memalign(size_t alignment, size_t n)
{
    if (alignment <= ALIGNMENT)
        return airlock_malloc(n);
    if (alignment & (alignment - 1) || n > SIZE_MAX / 4 || alignment > SIZE_MAX / 4)
        return NULL;
    char *p = airlock_malloc(n + alignment + MIN_CHUNK);
    if (!p || ((uintptr_t)p & (alignment - 1)) == 0)
        return p;
    uintptr_t q = ((uintptr_t)p + MIN_CHUNK + alignment - 1) & ~(uintptr_t)(alignment - 1);
    size_t lead = q - (uintptr_t)p; /* >= MIN_CHUNK and a multiple of 16 */
    struct chunk *c = payload_chunk(p);
    size_t total = chunk_size(c);
    struct chunk *aligned = payload_chunk((void *)q);
    aligned->head = (total - lead) | INUSE | PREV_INUSE;
    c->head = lead | INUSE | (c->head & PREV_INUSE);
    release_chunk(c); /* takes the lead's bytes off heap.in_use */
    trim_chunk(aligned, request_size(n));
    return (void *)q;
}

uintptr_t airlock_alloc_high_water(void) { return heap.high_water; }

size_t airlock_alloc_in_use(void) { return heap.in_use; }
