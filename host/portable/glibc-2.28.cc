// glibc-2.28.cc — linked only into the prebuilt addon (scripts/build-prebuilt.sh): the
// targets of the linker's --wrap for symbols that the static libstdc++ and libgcc
// archives, compiled against this machine's glibc, reference at versions newer than 2.28.
// Archive objects cannot take the .symver lines of glibc-2.28.h, so every reference to
// these names is routed here (--wrap=NAME sends NAME to __wrap_NAME).
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/random.h>

// glibc 2.34 gave these a new default version; the GLIBC_2.2.5 ones are the same functions
// and the ones glibc 2.28's libpthread.so.0 defines. The airlock_glibc_ names are local
// aliases of the versioned symbols, so --wrap (which matches plain names) leaves them be.
#define AIRLOCK_OLD_VERSION(name, ret, params, args)                              \
    extern "C" ret airlock_glibc_##name params;                                   \
    __asm__(".symver airlock_glibc_" #name "," #name "@GLIBC_2.2.5");             \
    extern "C" ret __wrap_##name params { return airlock_glibc_##name args; }

AIRLOCK_OLD_VERSION(pthread_create, int,
                    (pthread_t * t, const pthread_attr_t* a, void* (*f)(void*), void* arg), (t, a, f, arg))
AIRLOCK_OLD_VERSION(pthread_join, int, (pthread_t t, void** r), (t, r))
AIRLOCK_OLD_VERSION(pthread_detach, int, (pthread_t t), (t))
AIRLOCK_OLD_VERSION(pthread_once, int, (pthread_once_t * o, void (*f)(void)), (o, f))
AIRLOCK_OLD_VERSION(pthread_key_create, int, (pthread_key_t * k, void (*d)(void*)), (k, d))
AIRLOCK_OLD_VERSION(__pthread_key_create, int, (pthread_key_t * k, void (*d)(void*)), (k, d))
AIRLOCK_OLD_VERSION(pthread_key_delete, int, (pthread_key_t k), (k))
AIRLOCK_OLD_VERSION(pthread_getspecific, void*, (pthread_key_t k), (k))
AIRLOCK_OLD_VERSION(pthread_setspecific, int, (pthread_key_t k, const void* v), (k, v))

// libgcc's unwinder finds the exception tables of the object holding a return address
// with _dl_find_object (glibc 2.35) and has no fallback when that fails, so this answers
// the same question with dl_iterate_phdr (glibc 2.2.5): the loaded object whose segment
// holds pc, and its PT_GNU_EH_FRAME segment. The unwinder reads only dlfo_eh_frame (on
// x86-64 there is no data base: DLFO_STRUCT_HAS_EH_DBASE is 0). Exceptions are the addon's
// error path, so the walk over loaded objects per frame is not on a hot path.
namespace {
struct FindObject {
    uintptr_t pc;
    dl_find_object* out;
    bool found;
};

int visitObject(dl_phdr_info* info, size_t, void* data) {
    auto* find = static_cast<FindObject*>(data);
    const ElfW(Phdr)* holding = nullptr;
    const ElfW(Phdr)* ehFrame = nullptr;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        if (ph.p_type == PT_LOAD) {
            uintptr_t start = info->dlpi_addr + ph.p_vaddr;
            if (find->pc >= start && find->pc - start < ph.p_memsz) holding = &ph;
        } else if (ph.p_type == PT_GNU_EH_FRAME) {
            ehFrame = &ph;
        }
    }
    if (holding == nullptr) return 0;
    find->out->dlfo_flags = 0;
    find->out->dlfo_map_start = reinterpret_cast<void*>(info->dlpi_addr + holding->p_vaddr);
    find->out->dlfo_map_end = reinterpret_cast<void*>(info->dlpi_addr + holding->p_vaddr + holding->p_memsz);
    find->out->dlfo_link_map = nullptr;
    find->out->dlfo_eh_frame = ehFrame ? reinterpret_cast<void*>(info->dlpi_addr + ehFrame->p_vaddr) : nullptr;
    find->found = true;
    return 1;  // stops the walk
}
}  // namespace

extern "C" int __wrap__dl_find_object(void* pc, dl_find_object* result) {
    FindObject find{reinterpret_cast<uintptr_t>(pc), result, false};
    dl_iterate_phdr(visitObject, &find);
    return find.found ? 0 : -1;
}

// libstdc++'s random_device reaches arc4random (glibc 2.36). getrandom (glibc 2.25) reads
// the same kernel source; like arc4random, a failure the kernel cannot recover from aborts.
extern "C" uint32_t __wrap_arc4random(void) {
    uint32_t value;
    for (;;) {
        ssize_t n = getrandom(&value, sizeof value, 0);
        if (n == static_cast<ssize_t>(sizeof value)) return value;
        if (n < 0 && errno != EINTR) abort();
    }
}
