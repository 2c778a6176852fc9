// glibc-2.28.h — force-included (-include) into every translation unit of the prebuilt
// addon (scripts/build-prebuilt.sh) so that the binary built on a newer Debian asks the
// dynamic linker for nothing newer than glibc 2.28. The development build does not use it.
#ifndef AIRLOCK_GLIBC_2_28_H
#define AIRLOCK_GLIBC_2_28_H

// glibc 2.34 moved librt, libpthread and libdl into libc and gave these functions a new default
// version; the older versions below are the same functions (same ABI as today's headers:
// timer_t's 2.3.3 ABI on x86-64) and are what glibc 2.28 provides, from librt.so.1,
// libpthread.so.0 and libdl.so.2 (the build records all three as needed libraries).
__asm__(".symver timer_create,timer_create@GLIBC_2.3.3");
__asm__(".symver timer_delete,timer_delete@GLIBC_2.3.3");
__asm__(".symver timer_settime,timer_settime@GLIBC_2.3.3");
__asm__(".symver pthread_sigmask,pthread_sigmask@GLIBC_2.2.5");
__asm__(".symver pthread_getcpuclockid,pthread_getcpuclockid@GLIBC_2.2.5");
__asm__(".symver pthread_setname_np,pthread_setname_np@GLIBC_2.12");
__asm__(".symver pthread_sigqueue,pthread_sigqueue@GLIBC_2.11");
__asm__(".symver pthread_mutex_trylock,pthread_mutex_trylock@GLIBC_2.2.5");
// The same move took libdl into libc (census.cc looks mallinfo2 up at run time).
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");

#ifdef __cplusplus
// pthread_cond_clockwait appeared in glibc 2.30. Without this macro libstdc++'s
// condition_variable waits against a steady_clock deadline by converting it to a
// system_clock one with pthread_cond_timedwait (glibc 2.3.2), as it did before 2.30.
#include <bits/c++config.h>
#undef _GLIBCXX_USE_PTHREAD_COND_CLOCKWAIT

// glibc 2.32 exports __libc_single_threaded, which libstdc++ reads to skip atomic
// reference counting. This hidden definition (0: "other threads may exist") binds those
// reads inside the addon, so the shared pointers and strings always count atomically,
// which is what the addon needs anyway: it runs a vCPU thread beside Node's.
extern "C" __attribute__((weak, visibility("hidden"))) char __libc_single_threaded = 0;
#endif

#endif
