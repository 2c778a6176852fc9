/* platform.c — the wasm32 target of the guest runtime: the module's exports (init,
 * handle, control block address), its imports from the worker thread (module
 * "airlock"), and the linear-memory layout of the I/O buffers and the heap arena.
 *
 * Linear memory, low to high:
 *   0 .. __stack_high      linked shadow stack, sized for the default 1 MiB scratch
 *                          (--stack-first, so running off its low end wraps below
 *                          address 0 and traps)
 *   __stack_high ..        data and bss of the module (the control block lives here)
 *   layout_base ..         laid out by airlock_init() from the end of memory at that
 *                          moment: a larger shadow stack when the configuration asks
 *                          for one, then the input buffer, output buffer, heap arena
 *
 * The memory is imported (-Wl,--import-memory): the worker creates it with a maximum
 * computed from the configuration by the same layout rules (src/engine/wasm/
 * module-memory.ts), so the cap on the guest's memory is the host's, and nothing
 * written in linear memory (heap_end below, the allocator's limits) can raise it.
 *
 * Memory is grown to hold the stack and buffers at init, but the heap arena only as
 * the allocator reaches into it (see "The heap" below): a guest that uses 2 MiB of a
 * 64 MiB heap has a linear memory of a few MiB, which keeps creating and dropping
 * instances cheap for the embedder (V8 collects garbage by the memory's size).
 */
#include <stdint.h>
#include <string.h>

#include "../../runtime/alloc.h"
#include "../../runtime/platform.h"

#define AIRLOCK_IMPORT(name) __attribute__((import_module("airlock"), import_name(name)))
#define AIRLOCK_EXPORT(name) __attribute__((export_name(name), visibility("default")))

/* Blocks the worker until the main thread has answered: for HOST_CALL it writes the
 * HOST_RETURN message into the input buffer and control.request_len first. */
AIRLOCK_IMPORT("host_exit") void import_host_exit(uint32_t exit_kind);
/* Milliseconds as doubles: an i64 would cross the boundary as a BigInt, which is
 * slower and, for Unix nanoseconds, no more precise than Date's own resolution. */
AIRLOCK_IMPORT("wall_ms") double import_wall_ms(void);
AIRLOCK_IMPORT("monotonic_ms") double import_monotonic_ms(void);
/* Reads the cancel word the main thread sets in shared memory (and, when a CPU
 * monitor is armed, samples the thread's CPU clock at a bounded rate). */
AIRLOCK_IMPORT("interrupt_requested") int32_t import_interrupt_requested(void);
/* Never returns: the worker unwinds the module and reports the message. */
AIRLOCK_IMPORT("abort") void import_abort(const char *msg, uint32_t len);
/* Copies part of the Web API prelude, which the module carries in its custom section
 * "airlock.webapi" rather than in linear memory (webapi.c, group_evaluate). */
AIRLOCK_IMPORT("webapi_read") int32_t import_webapi_read(uint32_t offset, void *dst, uint32_t len);

int plat_webapi_read(uint32_t offset, char *dst, uint32_t len) { return import_webapi_read(offset, dst, len); }

#define WASM_PAGE_SIZE 65536u
/* Bytes of shadow stack kept below QuickJS's limit for C code that runs between
 * its stack checks (parser, regexp, libc) and above it for the frames of boot. */
#define STACK_RESERVE (128u * 1024u)
/* The largest shadow stack, reserves included: the worker thread's native stack,
 * which wasm frames use beside it, is sized for it (pool.ts). */
#define MAX_STACK_BYTES (8u * 1024u * 1024u)

extern unsigned char __stack_low;
extern unsigned char __stack_high;

static struct airlock_control control;

struct airlock_control *plat_control(void) { return &control; }

void plat_exit(uint32_t exit_kind) { import_host_exit(exit_kind); }

void plat_exit_sleep(void) { import_host_exit(AIRLOCK_EXIT_HOST_CALL); }

int64_t plat_wall_ns(void) { return (int64_t)(import_wall_ms() * 1e6); }

uint64_t plat_monotonic_ns(void)
{
    double ms = import_monotonic_ms();
    return ms > 0 ? (uint64_t)(ms * 1e6) : 0;
}

int plat_interrupt_requested(void) { return import_interrupt_requested() != 0; }

_Noreturn void plat_abort(const char *msg)
{
    import_abort(msg, (uint32_t)strlen(msg));
    __builtin_unreachable();
}

/* --- The heap -----------------------------------------------------------------
 * The allocator (runtime/alloc.c) owns [heap_addr, heap_end) and carves it from the
 * bottom; it writes nowhere above its high-water mark plus the chunk it is carving.
 * The build wraps its entry points (-Wl,--wrap): each call first grows linear memory
 * to cover the high-water mark plus the request, so the allocator only ever touches
 * memory that exists, and refuses (out of memory) exactly as before, at heap_end.
 * heap_end is only this module's bookkeeping: past the memory's maximum (the host's)
 * a grow fails whatever it says, and the allocation is refused the same way. */
void *__real_airlock_malloc(size_t n);
void *__real_airlock_calloc(size_t count, size_t size);
void *__real_airlock_realloc(void *p, size_t n);
void *__real_airlock_memalign(size_t alignment, size_t n);

/* Bytes past the high-water mark a carve can touch beyond the request: chunk head,
 * the next chunk's size word, alignment (alloc.c: CHUNK_OVERHEAD, ALIGNMENT, MIN_CHUNK). */
#define CARVE_SLACK 64u
/* Memory grows by at least this much, or by an eighth of the heap's current size if
 * larger: geometric steps keep grows (and V8's bookkeeping of them) rare, and a small
 * ratio keeps little never-used memory above the heap, which the host scans for
 * content on every snapshot and restore (it sizes both by what memory holds). */
#define GROW_MIN (64u * 1024u)
#define GROW_SHIFT 3

static uint64_t heap_start;
static uint64_t heap_end;

/* Makes [0, need) exist, need clamped to heap_end. Returns 0 when memory cannot grow. */
static int cover(uint64_t need)
{
    if (need > heap_end)
        need = heap_end;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * WASM_PAGE_SIZE;
    if (need <= have)
        return 1;
    uint64_t heap_part = have > heap_start ? have - heap_start : 0;
    uint64_t step = heap_part >> GROW_SHIFT > GROW_MIN ? heap_part >> GROW_SHIFT : GROW_MIN;
    uint64_t target = have + step > need ? have + step : need;
    if (target > heap_end)
        target = heap_end;
    uint64_t pages = (target - have + WASM_PAGE_SIZE - 1) / WASM_PAGE_SIZE;
    if (__builtin_wasm_memory_grow(0, (unsigned long)pages) != (unsigned long)-1)
        return 1;
    /* The generous step failed: the exact need may still fit. */
    pages = (need - have + WASM_PAGE_SIZE - 1) / WASM_PAGE_SIZE;
    return __builtin_wasm_memory_grow(0, (unsigned long)pages) != (unsigned long)-1;
}

/* Before the allocator may carve `n` bytes from its top. A request larger than the
 * whole heap can only be served from freed chunks, which lie below the high-water
 * mark: nothing to grow. */
static int cover_request(uint64_t n)
{
    if (n > heap_end - heap_start)
        return 1;
    return cover((uint64_t)airlock_alloc_high_water() + n + CARVE_SLACK);
}

void *__wrap_airlock_malloc(size_t n) { return cover_request(n) ? __real_airlock_malloc(n) : NULL; }

void *__wrap_airlock_calloc(size_t count, size_t size)
{
    uint64_t n = (uint64_t)count * size; /* no wrap: both are 32-bit */
    return cover_request(n) ? __real_airlock_calloc(count, size) : NULL;
}

void *__wrap_airlock_realloc(void *p, size_t n) { return cover_request(n) ? __real_airlock_realloc(p, n) : NULL; }

void *__wrap_airlock_memalign(size_t alignment, size_t n)
{
    return cover_request((uint64_t)n + alignment + CARVE_SLACK) ? __real_airlock_memalign(alignment, n) : NULL;
}

/* Error codes of airlock_init, mirrored by src/engine/wasm/channel.ts. */
#define INIT_OK 0
#define INIT_BAD_CONFIG 1
#define INIT_NO_MEMORY 2

static uint64_t align_up(uint64_t value, uint64_t alignment)
{
    return (value + alignment - 1) & ~(alignment - 1);
}

/* Where airlock_init started its layout (the end of the module's static data); in
 * bss, so a snapshot carries it. */
static uint64_t layout_base;

/* Lays out the shadow stack (when the linked one is too small), input, output and
 * heap above the current end of memory, growing it to hold the stack and buffers
 * (the heap grows as it is used), and fills the control block. Called once per
 * instance, before anything else; airlock_boot follows, run by the worker on the
 * stack chosen here (control.stack_top). */
AIRLOCK_EXPORT("airlock_init")
uint32_t airlock_init(uint32_t input_size, uint32_t output_size, uint32_t heap_size, uint32_t stack_size,
                      uint32_t console_limit)
{
    if (input_size < AIRLOCK_MSG_HEADER_SIZE || output_size < AIRLOCK_MSG_HEADER_SIZE || heap_size == 0 ||
        stack_size == 0)
        return INIT_BAD_CONFIG;

    /* 64-bit arithmetic: the sum of three 32-bit sizes cannot wrap, and anything past
     * the 4 GiB wasm32 address space is refused below. */
    uint64_t base = (uint64_t)__builtin_wasm_memory_size(0) * WASM_PAGE_SIZE;

    /* QuickJS gets the stack asked for, up to MAX_STACK_BYTES with the reserves kept
     * free: on the linked stack when it fits (the usual case), else on one laid out
     * here, whose overflow past QuickJS's limit and the reserve is not a trap. */
    uint64_t linked_stack = (uint64_t)(uintptr_t)&__stack_high - (uint64_t)(uintptr_t)&__stack_low;
    uint64_t linked_usable = linked_stack > 2 * STACK_RESERVE ? linked_stack - 2 * STACK_RESERVE : 0;
    uint64_t usable = stack_size < MAX_STACK_BYTES - 2 * STACK_RESERVE ? stack_size : MAX_STACK_BYTES - 2 * STACK_RESERVE;
    uint64_t stack_top = (uint64_t)(uintptr_t)&__stack_high;
    uint64_t input_addr = base;
    if (usable > linked_usable) {
        stack_top = align_up(base + usable + 2 * STACK_RESERVE, 16);
        input_addr = stack_top;
    }
    uint64_t output_addr = align_up(input_addr + input_size, 16);
    uint64_t heap_addr = align_up(output_addr + output_size, 4096);
    uint64_t end = align_up(heap_addr + heap_size, WASM_PAGE_SIZE);
    if (end > (uint64_t)UINT32_MAX + 1)
        return INIT_NO_MEMORY;
    heap_start = heap_addr;
    heap_end = heap_addr + heap_size;
    uint64_t grow_pages = (align_up(heap_addr, WASM_PAGE_SIZE) - base) / WASM_PAGE_SIZE;
    if (grow_pages > 0 && __builtin_wasm_memory_grow(0, (unsigned long)grow_pages) == (unsigned long)-1)
        return INIT_NO_MEMORY;

    layout_base = base;
    control.input_addr = input_addr;
    control.input_size = input_size;
    control.output_addr = output_addr;
    control.output_size = output_size;
    control.heap_addr = heap_addr;
    control.heap_size = heap_size;
    control.stack_top = stack_top;
    control.stack_size = usable;
    control.console_limit = console_limit;
    control.tsc_khz = 0;
    control.tsc_base = 0;
    control.wall_ns_base = 0;
    control.request_len = 0;
    control.response_len = 0;
    return INIT_OK;
}

/* Boots the runtime (which writes READY or ABORT into the output buffer). QuickJS
 * measures its stack limit from where this runs: on control.stack_top. */
AIRLOCK_EXPORT("airlock_boot")
void airlock_boot(void) { airlock_runtime_init(); }

/* Handles the request the worker placed in the input buffer (control.request_len).
 * Leaves the post-call GC to airlock_after, which the worker runs once the response
 * is on its way (or this runs first thing in the next request). */
AIRLOCK_EXPORT("airlock_handle")
void airlock_handle(void) { airlock_runtime_handle(); }

/* The post-call work of the last request (its GC); a no-op when there is none. The
 * response published the heap's high-water mark before this ran: refresh it, since
 * the host copies the heap up to it for a snapshot. */
AIRLOCK_EXPORT("airlock_after")
void airlock_after(void)
{
    airlock_runtime_after();
    control.heap_high_water = airlock_alloc_high_water();
    control.heap_in_use = airlock_alloc_in_use();
}

AIRLOCK_EXPORT("airlock_control")
struct airlock_control *airlock_control_block(void) { return &control; }

/* Where the linked shadow stack ends (highest address), and the module's static data
 * begins. */
AIRLOCK_EXPORT("airlock_stack_high")
uintptr_t airlock_stack_high(void) { return (uintptr_t)&__stack_high; }

/* Where airlock_init's layout begins: the end of the module's static data. */
AIRLOCK_EXPORT("airlock_layout_base")
uintptr_t airlock_layout_base(void) { return (uintptr_t)layout_base; }
