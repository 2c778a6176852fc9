/* libc_heap.c — libc's malloc family routed to the guest allocator, for the targets
 * with no kernel heap of their own (kvm: no syscalls; wasm: libc's sbrk would grow
 * linear memory into the arena). QuickJS's few direct libc calls then use the guest
 * heap and count against its size. Not for the native target, which keeps glibc's. */
#include <errno.h>
#include <stddef.h>

#include "alloc.h"

void *malloc(size_t n) { return airlock_malloc(n); }
void free(void *p) { airlock_free(p); }
void *calloc(size_t count, size_t size) { return airlock_calloc(count, size); }
void *realloc(void *p, size_t n) { return airlock_realloc(p, n); }
size_t malloc_usable_size(void *p) { return airlock_usable_size(p); }
void *aligned_alloc(size_t alignment, size_t n) { return airlock_memalign(alignment, n); }
void *memalign(size_t alignment, size_t n) { return airlock_memalign(alignment, n); }

int posix_memalign(void **out, size_t alignment, size_t n)
{
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)))
        return EINVAL;
    void *p = airlock_memalign(alignment, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}
