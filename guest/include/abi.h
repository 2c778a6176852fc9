/* abi.h — the one definition of the Airlock host<->guest ABI: memory map, control
 * block, message framing, message kinds, status codes and ABI version.
 *
 * Included by the guest runtime (C, both targets) and the host addon (C++).
 * scripts/gen-abi-ts.mjs turns every `#define AIRLOCK_*` integer constant below into
 * src/engine/abi.generated.ts, so keep them as plain `#define NAME <integer>` lines.
 * Bump AIRLOCK_ABI_VERSION on any change a host and guest must agree on.
 */
#ifndef AIRLOCK_ABI_H
#define AIRLOCK_ABI_H

#include <stdint.h>
#include <stddef.h>

#define AIRLOCK_ABI_VERSION 6

/* ------------------------------------------------------------------------------
 * KVM memory map. Guest physical == guest virtual (identity map). Every mapping is a
 * 2 MiB page: on PVM hosts a guest's first touch of a 4 KiB page costs 2.5-12 us,
 * of a 2 MiB page ~0.04 us. So guards are whole unmapped 2 MiB slots, which cost no
 * RAM (the host mapping is MAP_NORESERVE and never touched there).
 *
 *  0x0000_0000 +-------------------------------+
 *              | system: GDT, page tables      |  never mapped for the guest, so the
 *              |                               |  guest cannot edit its page tables
 *              |                               |  and a NULL dereference faults
 *  0x0020_0000 +-------------------------------+ AIRLOCK_IMAGE_BASE
 *              | image: header, text, rodata,  |  linked at this address; the header
 *              | data, bss (control block and  |  (struct airlock_image_header) is
 *              | TLS block live in its bss)    |  the first bytes of the image
 *              +-------------------------------+ page aligned
 *              | input buffer  (host -> guest) |
 *              | output buffer (guest -> host) |
 *              +-------------------------------+ 2 MiB aligned
 *              | guard (2 MiB, unmapped)       |  stack overflow faults here
 *              +-------------------------------+
 *              | stack (scratch size)          |  grows down from stack_top
 *              +-------------------------------+ stack_top, 2 MiB aligned
 *              | heap (heap size)              |  the guest allocator's arena
 *              +-------------------------------+ memory end, 2 MiB aligned
 *              (everything above is unmapped)
 *
 * The host computes the map from the builder's sizes (rounded up to 2 MiB where
 * the diagram says so) and writes the addresses into the control block before the
 * first instruction runs. The guest never assumes addresses beyond its own image.
 *
 * Entry: the vCPU starts in 64-bit mode at CPL 3 (CS/SS DPL 3, IF clear; `out` to
 * AIRLOCK_PORT is allowed by the TSS I/O bitmap, since PVM hosts ignore RFLAGS.IOPL,
 * which is set to 3 as well) at header.entry, RSP = stack_top, FS base =
 * header.tls_block (libc's thread pointer: its first word points to itself).
 * No IDT exists: any CPU exception becomes a triple fault (KVM_EXIT_SHUTDOWN), which
 * the host treats as a guest abort.
 * ---------------------------------------------------------------------------- */
#define AIRLOCK_PAGE_SIZE 4096
#define AIRLOCK_HUGE_PAGE_SIZE 2097152
#define AIRLOCK_IMAGE_BASE 2097152

/* The guest exits with `out dx, eax`: dx = AIRLOCK_PORT, eax = AIRLOCK_EXIT_*.
 * Any other exit (another port, MMIO, HLT, shutdown, entry failure) is a guest abort. */
#define AIRLOCK_PORT 0x3A1
#define AIRLOCK_EXIT_RESPONSE 1  /* output holds console msgs + one final message   */
#define AIRLOCK_EXIT_HOST_CALL 2 /* output holds console msgs + one HOST_CALL message */
#define AIRLOCK_EXIT_ABORT 3     /* output: console lines, one ABORT; guest is dead */
#define AIRLOCK_EXIT_IDLE 4      /* polling guest parked: re-enter it with a request */

/* ------------------------------------------------------------------------------
 * Polling (KVM). An exit costs tens of microseconds on nested/PVM hosts, more than
 * a whole small call. So between requests a guest that sets AIRLOCK_GUEST_FLAG_POLLS
 * spins on control.poll_state for up to control.poll_ticks TSC ticks, and the host
 * hands requests over through memory; while a host core is free, a host thread
 * watches for the response in memory too: a back-to-back call makes no exit at all.
 * Every transition is a compare-and-swap on poll_state by the side named:
 *   IDLE -> REQUEST_EXIT   host (vCPU thread, guest stopped): request written,
 *                          answer with an exit
 *   READY -> REQUEST       host: request written, a host thread watches for the response
 *   READY -> REQUEST_EXIT  host: request written, answer with an exit
 *   REQUEST -> REQUEST_EXIT host: stopped watching, answer with an exit after all
 *   REQUEST -> READY       guest: response written (no exit); then post-call work
 *   REQUEST_EXIT           guest answers with AIRLOCK_EXIT_RESPONSE; the host sets
 *                          READY before running it on to poll, or IDLE if it will not
 *   READY -> IDLE          guest: poll window over, then AIRLOCK_EXIT_IDLE;
 *                          host (vCPU thread, or the thread posting an op other
 *                          than a request): taking the guest out of its poll; a
 *                          polling guest that reads IDLE exits AIRLOCK_EXIT_IDLE
 *   IDLE -> READY          host (vCPU thread, guest stopped): a restored guest polls
 *                          for the next request (a window as after an answer)
 * A host call made during a REQUEST (a host thread watches) is handed over in memory
 * too, with three more states:
 *   REQUEST -> HOST_CALL    guest: HOST_CALL message in the output buffer; it waits
 *                           in memory for host_call_ticks TSC ticks at most
 *   HOST_CALL -> HOST_CALL_TAKEN host: the call is dispatched; its HOST_RETURN will be
 *                           written into the input buffer
 *   HOST_CALL -> REQUEST_EXIT guest: nobody took the call in time: exit with
 *                           AIRLOCK_EXIT_HOST_CALL (the ordinary host call)
 *   HOST_CALL_TAKEN -> REQUEST / REQUEST_EXIT host: HOST_RETURN written; the guest
 *                           runs on (REQUEST: watched, so its next host call or its
 *                           answer is handed over in memory again)
 *   HOST_CALL_TAKEN -> HOST_CALL_EXIT guest: the reply did not come in time: exit
 *                           with AIRLOCK_EXIT_HOST_CALL; the host writes the reply of
 *                           the call it took, sets REQUEST_EXIT and re-enters
 * The host may also move REQUEST_EXIT -> HOST_CALL_TAKEN itself while the guest is
 * stopped at a HOST_CALL exit (its main thread then writes the reply into memory); it
 * moves it on to REQUEST or REQUEST_EXIT before the guest runs again, so a guest never
 * sees that step.
 * The CAS decides which side owns a call, so it is dispatched exactly once. An exit
 * with HOST_CALL or HOST_CALL_TAKEN, or any of the three with no request in flight,
 * aborts the guest. The guest's wait for a taken call is not charged to its CPU
 * budget (up to host_call_ticks); the wall clock runs.
 * With poll_ticks 0 the guest runs its post-call work before answering: the host
 * will not run it again until the next request.
 * The host trusts none of it: after an answer it lets the guest run on for at most
 * the poll window plus a 2 ms GC allowance, then takes it out of its poll; a value
 * no step above produces (or REQUEST / REQUEST_EXIT with no request in flight)
 * aborts the guest.
 * ---------------------------------------------------------------------------- */
#define AIRLOCK_POLL_IDLE 0
#define AIRLOCK_POLL_READY 1
#define AIRLOCK_POLL_REQUEST 2
#define AIRLOCK_POLL_REQUEST_EXIT 3
#define AIRLOCK_POLL_HOST_CALL 4
#define AIRLOCK_POLL_HOST_CALL_TAKEN 5
#define AIRLOCK_POLL_HOST_CALL_EXIT 6
#define AIRLOCK_GUEST_FLAG_POLLS 1

/* ------------------------------------------------------------------------------
 * Image header: the first bytes of the flat guest image (KVM target only).
 * Every field is an absolute guest address unless it says otherwise. The host
 * validates all of them against the image size and the memory map before use.
 * ---------------------------------------------------------------------------- */
#define AIRLOCK_IMAGE_MAGIC 0x4D494C41 /* "ALIM" little-endian */

struct airlock_image_header {
    uint32_t magic;       /* AIRLOCK_IMAGE_MAGIC */
    uint32_t abi_version; /* AIRLOCK_ABI_VERSION the image was built with */
    uint64_t load_addr;   /* == AIRLOCK_IMAGE_BASE */
    uint64_t entry;       /* first instruction */
    uint64_t file_end;    /* load_addr + bytes of the flat file */
    uint64_t bss_end;     /* end of zero-initialised memory (page aligned) */
    uint64_t data_start;  /* first writable byte of the image (page aligned) */
    uint64_t control;     /* struct airlock_control (page aligned, inside bss) */
    uint64_t tls_block;   /* FS base for the guest libc */
};
#define AIRLOCK_IMG_OFF_MAGIC 0
#define AIRLOCK_IMG_OFF_ABI_VERSION 4
#define AIRLOCK_IMG_OFF_LOAD_ADDR 8
#define AIRLOCK_IMG_OFF_ENTRY 16
#define AIRLOCK_IMG_OFF_FILE_END 24
#define AIRLOCK_IMG_OFF_BSS_END 32
#define AIRLOCK_IMG_OFF_DATA_START 40
#define AIRLOCK_IMG_OFF_CONTROL 48
#define AIRLOCK_IMG_OFF_TLS_BLOCK 56
#define AIRLOCK_IMG_HEADER_SIZE 64

/* ------------------------------------------------------------------------------
 * Control block: one page shared by host and guest. On KVM it lives in the image's
 * bss at header.control; on wasm the module exports its address.
 * Host-written fields are read by the guest; guest-written fields are hostile to
 * the host and are bounds-checked there before any use.
 * ---------------------------------------------------------------------------- */
#define AIRLOCK_CONTROL_MAGIC 0x42434C41 /* "ALCB", written by the guest when ready */

struct airlock_control {
    /* Guest-written once, when the runtime is initialised. */
    uint32_t magic;
    uint32_t abi_version;
    /* Host-written before the first guest instruction; constant afterwards. */
    uint64_t input_addr;
    uint64_t input_size;
    uint64_t output_addr;
    uint64_t output_size;
    uint64_t heap_addr;
    uint64_t heap_size;
    uint64_t stack_top;
    uint64_t stack_size;
    uint64_t console_limit; /* console bytes kept per call; the rest is counted */
    uint64_t tsc_khz;       /* KVM: TSC frequency; 0 on wasm (time is imported) */
    /* Host-written before every entry into the guest. */
    uint64_t tsc_base;     /* KVM: rdtsc value at the instant wall_ns_base was read */
    int64_t wall_ns_base;  /* Unix time in nanoseconds at tsc_base */
    uint32_t request_len;  /* bytes of the message at input_addr */
    uint32_t host_flags;   /* reserved, 0 */
    /* Guest-written before every exit. */
    uint32_t response_len; /* bytes of messages at output_addr */
    uint32_t guest_flags;  /* AIRLOCK_GUEST_FLAG_*, set before the first exit */
    uint64_t heap_high_water; /* first heap byte never handed out (heap_addr..heap_addr+heap_size) */
    uint64_t heap_in_use;     /* bytes currently allocated, for statistics */
    /* Polling (KVM): both sides, compare-and-swap only (see AIRLOCK_POLL_*). */
    uint32_t poll_state;
    uint32_t reserved;
    uint64_t poll_ticks; /* host-written: TSC ticks a guest polls before parking; 0 = never */
    uint64_t host_call_ticks; /* host-written: TSC ticks a guest waits in memory for a host
                               * call's reply (AIRLOCK_POLL_HOST_CALL); 0 = always exit */
};
#define AIRLOCK_CTRL_OFF_MAGIC 0
#define AIRLOCK_CTRL_OFF_ABI_VERSION 4
#define AIRLOCK_CTRL_OFF_INPUT_ADDR 8
#define AIRLOCK_CTRL_OFF_INPUT_SIZE 16
#define AIRLOCK_CTRL_OFF_OUTPUT_ADDR 24
#define AIRLOCK_CTRL_OFF_OUTPUT_SIZE 32
#define AIRLOCK_CTRL_OFF_HEAP_ADDR 40
#define AIRLOCK_CTRL_OFF_HEAP_SIZE 48
#define AIRLOCK_CTRL_OFF_STACK_TOP 56
#define AIRLOCK_CTRL_OFF_STACK_SIZE 64
#define AIRLOCK_CTRL_OFF_CONSOLE_LIMIT 72
#define AIRLOCK_CTRL_OFF_TSC_KHZ 80
#define AIRLOCK_CTRL_OFF_TSC_BASE 88
#define AIRLOCK_CTRL_OFF_WALL_NS_BASE 96
#define AIRLOCK_CTRL_OFF_REQUEST_LEN 104
#define AIRLOCK_CTRL_OFF_HOST_FLAGS 108
#define AIRLOCK_CTRL_OFF_RESPONSE_LEN 112
#define AIRLOCK_CTRL_OFF_GUEST_FLAGS 116
#define AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER 120
#define AIRLOCK_CTRL_OFF_HEAP_IN_USE 128
#define AIRLOCK_CTRL_OFF_POLL_STATE 136
#define AIRLOCK_CTRL_OFF_POLL_TICKS 144
#define AIRLOCK_CTRL_OFF_HOST_CALL_TICKS 152
#define AIRLOCK_CONTROL_SIZE 160

/* ------------------------------------------------------------------------------
 * Messages. A message is a 16-byte header followed by `length` bytes of body; the
 * body is `count` fields, each a little-endian uint32 byte length followed by that
 * many bytes (UTF-8 text or JSON), with no padding. The input buffer holds exactly
 * one message. The output buffer holds zero or more CONSOLE messages followed by
 * exactly one final message (RESULT, READY, HOST_CALL or ABORT); response_len
 * covers them all. Every length is checked against its buffer by the reader.
 *
 * Requests (host -> guest) and their fields:
 *   LOAD_RUNTIME  pairs (module, function) for every registered host function.
 *                 Replaces the JS context; answered by RESULT.
 *   LOAD          groups of 4: (tag, namespace, name, source); tag "module" registers
 *                 a user module (compiled lazily on first import), tag "handler"
 *                 compiles and evaluates a handler (namespace empty). Answered by
 *                 RESULT: OK, or COMPILE_ERROR naming the handler/module.
 *                 flags: AIRLOCK_LOAD_FLAG_BYTECODE makes the groups 5 fields,
 *                 (tag, namespace, name, source, bytecode): a non-empty bytecode is
 *                 what COMPILE produced for that group in a guest that ran no tenant
 *                 code, and is read instead of compiling the source.
 *   COMPILE       groups of 4 like LOAD's; compiles each (nothing runs) and answers
 *                 RESULT OK with one field per group: its bytecode (JS_WriteObject),
 *                 or empty when that group does not compile.
 *   CALL          (handler name, event JSON); field 2 absent = undefined event.
 *                 flags: AIRLOCK_CALL_FLAG_GC runs a full GC after the call;
 *                 AIRLOCK_CALL_FLAG_GC_AUTO runs one only if the JS heap grew by a
 *                 share of itself since the last collection (runtime.c, "post-call
 *                 GC policy"); neither: no post-call GC (QuickJS still collects
 *                 when allocation crosses its own threshold).
 *   UNLOAD        no fields: drop handlers and modules (fresh JS context).
 *   HOST_RETURN   answer to HOST_CALL: status OK + (result JSON; absent = undefined)
 *                 or status HOST_ERROR + (message).
 *   CHUNK         (bytes): a slice of a request larger than the input buffer. The
 *                 guest appends it and answers RESULT OK; with flags
 *                 AIRLOCK_CHUNK_FLAG_LAST it then handles the assembled bytes as
 *                 the request (which is a whole message with header).
 *   GC            no fields: run the GC now. Answered by RESULT OK.
 * Responses (guest -> host):
 *   READY         (engine version) after boot.
 *   RESULT        status OK: (result JSON; absent = undefined); status EXCEPTION:
 *                 (name, message, stack); any other status: (message).
 *   HOST_CALL     (module, function, args JSON array).
 *   CONSOLE       (level, text); level is log|info|warn|error|debug.
 *   ABORT         (message): the guest cannot continue.
 * ---------------------------------------------------------------------------- */
struct airlock_msg {
    uint32_t kind;   /* AIRLOCK_MSG_* */
    uint32_t status; /* AIRLOCK_STATUS_* in responses; AIRLOCK_*_FLAG_* in requests */
    uint32_t length; /* bytes of body after this header */
    uint32_t count;  /* fields in the body */
};
#define AIRLOCK_MSG_HEADER_SIZE 16
#define AIRLOCK_FIELD_HEADER_SIZE 4

#define AIRLOCK_MSG_LOAD_RUNTIME 1
#define AIRLOCK_MSG_LOAD 2
#define AIRLOCK_MSG_CALL 3
#define AIRLOCK_MSG_UNLOAD 4
#define AIRLOCK_MSG_HOST_RETURN 5
#define AIRLOCK_MSG_CHUNK 6
#define AIRLOCK_MSG_GC 7
#define AIRLOCK_MSG_COMPILE 8
#define AIRLOCK_MSG_READY 64
#define AIRLOCK_MSG_RESULT 65
#define AIRLOCK_MSG_HOST_CALL 66
#define AIRLOCK_MSG_CONSOLE 67
#define AIRLOCK_MSG_ABORT 68

#define AIRLOCK_CALL_FLAG_GC 1
#define AIRLOCK_CALL_FLAG_GC_AUTO 2
#define AIRLOCK_CHUNK_FLAG_LAST 1

/* LOAD_RUNTIME, LOAD and CALL: the request's last field is AIRLOCK_ENTROPY_SIZE bytes of
 * host entropy, mixed into the guest's CSPRNG before anything else runs. */
#define AIRLOCK_REQUEST_FLAG_ENTROPY 0x100
#define AIRLOCK_ENTROPY_SIZE 32
/* LOAD_RUNTIME: a field of AIRLOCK_RUNTIME_OPTIONS_SIZE bytes follows the (module,
 * function) pairs (before the entropy): u32 flags, u32 time resolution in microseconds
 * (hardened profile; 0 = 1000), u64 Math.random seed, i64 fixed Date.now() in ms, all
 * little-endian. */
#define AIRLOCK_RUNTIME_FLAG_OPTIONS 0x200
/* LOAD: every group carries a fifth field, its cached bytecode (empty = compile the source). */
#define AIRLOCK_LOAD_FLAG_BYTECODE 0x400
#define AIRLOCK_RUNTIME_OPTIONS_SIZE 24
#define AIRLOCK_RUNTIME_OPT_HARDENED 1     /* eval/Function off, intrinsics frozen, coarse clocks */
#define AIRLOCK_RUNTIME_OPT_FIXED_RANDOM 2 /* Math.random from the seed, never reseeded */
#define AIRLOCK_RUNTIME_OPT_FIXED_TIME 4   /* Date.now() is the fixed time (hardened only) */
/* Binary data: every JSON field (CALL's event, RESULT's value, HOST_CALL's arguments,
 * HOST_RETURN's value) is followed by one field per Uint8Array/ArrayBuffer, each named in
 * the JSON by {"$airlock.binary": <index>, "type": "Uint8Array"|"ArrayBuffer"}. */
#define AIRLOCK_RUNTIME_OPT_BINARY 8

#define AIRLOCK_STATUS_OK 0
#define AIRLOCK_STATUS_EXCEPTION 1      /* the handler threw: name, message, stack */
#define AIRLOCK_STATUS_NO_HANDLER 2     /* CALL named no loaded handler */
#define AIRLOCK_STATUS_COMPILE_ERROR 3  /* LOAD failed: message names handler and line */
#define AIRLOCK_STATUS_TOO_LARGE 4      /* result or host-call args exceed output buffer */
#define AIRLOCK_STATUS_BAD_REQUEST 5    /* malformed request from the host (a host bug) */
#define AIRLOCK_STATUS_OUT_OF_MEMORY 6  /* guest heap exhausted during the request */
#define AIRLOCK_STATUS_STACK_OVERFLOW 7 /* guest JS stack exhausted during the request */
#define AIRLOCK_STATUS_NOT_SERIALIZABLE 8 /* result could not be turned into JSON */
#define AIRLOCK_STATUS_HOST_ERROR 9     /* HOST_RETURN: the host function threw */
#define AIRLOCK_STATUS_UNSETTLED 10     /* handler promise never settled */
#define AIRLOCK_STATUS_INTERRUPTED 11   /* plat_interrupt_requested() stopped the request */

#ifndef __cplusplus
_Static_assert(sizeof(struct airlock_image_header) == AIRLOCK_IMG_HEADER_SIZE, "image header size");
_Static_assert(offsetof(struct airlock_image_header, entry) == AIRLOCK_IMG_OFF_ENTRY, "entry");
_Static_assert(offsetof(struct airlock_image_header, control) == AIRLOCK_IMG_OFF_CONTROL, "control");
_Static_assert(offsetof(struct airlock_image_header, tls_block) == AIRLOCK_IMG_OFF_TLS_BLOCK, "tls");
_Static_assert(sizeof(struct airlock_control) == AIRLOCK_CONTROL_SIZE, "control size");
_Static_assert(offsetof(struct airlock_control, tsc_khz) == AIRLOCK_CTRL_OFF_TSC_KHZ, "tsc_khz");
_Static_assert(offsetof(struct airlock_control, request_len) == AIRLOCK_CTRL_OFF_REQUEST_LEN, "req");
_Static_assert(offsetof(struct airlock_control, response_len) == AIRLOCK_CTRL_OFF_RESPONSE_LEN, "resp");
_Static_assert(offsetof(struct airlock_control, heap_high_water) == AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER, "hw");
_Static_assert(offsetof(struct airlock_control, heap_in_use) == AIRLOCK_CTRL_OFF_HEAP_IN_USE, "in use");
_Static_assert(offsetof(struct airlock_control, poll_state) == AIRLOCK_CTRL_OFF_POLL_STATE, "poll state");
_Static_assert(offsetof(struct airlock_control, poll_ticks) == AIRLOCK_CTRL_OFF_POLL_TICKS, "poll ticks");
_Static_assert(offsetof(struct airlock_control, host_call_ticks) == AIRLOCK_CTRL_OFF_HOST_CALL_TICKS, "host call ticks");
_Static_assert(sizeof(struct airlock_msg) == AIRLOCK_MSG_HEADER_SIZE, "msg header");
#else
static_assert(sizeof(airlock_image_header) == AIRLOCK_IMG_HEADER_SIZE, "image header size");
static_assert(offsetof(airlock_image_header, control) == AIRLOCK_IMG_OFF_CONTROL, "control");
static_assert(offsetof(airlock_image_header, tls_block) == AIRLOCK_IMG_OFF_TLS_BLOCK, "tls");
static_assert(sizeof(airlock_control) == AIRLOCK_CONTROL_SIZE, "control size");
static_assert(offsetof(airlock_control, request_len) == AIRLOCK_CTRL_OFF_REQUEST_LEN, "req");
static_assert(offsetof(airlock_control, response_len) == AIRLOCK_CTRL_OFF_RESPONSE_LEN, "resp");
static_assert(offsetof(airlock_control, heap_high_water) == AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER, "hw");
static_assert(offsetof(airlock_control, poll_state) == AIRLOCK_CTRL_OFF_POLL_STATE, "poll state");
static_assert(offsetof(airlock_control, poll_ticks) == AIRLOCK_CTRL_OFF_POLL_TICKS, "poll ticks");
static_assert(offsetof(airlock_control, host_call_ticks) == AIRLOCK_CTRL_OFF_HOST_CALL_TICKS, "host call ticks");
static_assert(sizeof(airlock_msg) == AIRLOCK_MSG_HEADER_SIZE, "msg header");
#endif

#endif /* AIRLOCK_ABI_H */
