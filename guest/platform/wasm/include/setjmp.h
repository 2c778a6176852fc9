/* setjmp.h — stands in for the header wasi-libc lacks: QuickJS's dtoa.c includes it
 * but uses none of it, and the wasm target must not fall back to the build host's. */
#ifndef AIRLOCK_WASM_SETJMP_H
#define AIRLOCK_WASM_SETJMP_H
#endif
