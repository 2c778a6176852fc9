/* alloc.h — the guest heap allocator over the arena the host gives the guest
 * (control->heap_addr, heap_size). Used by QuickJS on every target and, on KVM, by
 * libc's malloc family too. */
#ifndef AIRLOCK_ALLOC_H
#define AIRLOCK_ALLOC_H

#include <stddef.h>
#include <stdint.h>

/* Takes over [base, base + size). Returns 0, or -1 when the arena is too small. */
int airlock_alloc_init(void *base, size_t size);

void *airlock_malloc(size_t size);
void *airlock_calloc(size_t count, size_t size);
void *airlock_realloc(void *ptr, size_t size);
void airlock_free(void *ptr);
size_t airlock_usable_size(const void *ptr);
/* alignment: a power of two; any value up to the arena size. */
void *airlock_memalign(size_t alignment, size_t size);

/* First arena byte never handed out (only grows), and bytes in live chunks. */
uintptr_t airlock_alloc_high_water(void);
size_t airlock_alloc_in_use(void);

#endif /* AIRLOCK_ALLOC_H */
