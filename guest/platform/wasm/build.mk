# build.mk — builds the wasm32 guest module out/guest/wasm/airlock-guest.wasm from
# QuickJS, the shared runtime (guest/runtime) and guest/platform/wasm. Included by
# guest/Makefile (`make -C guest wasm`); also usable alone with
# `make -C guest -f platform/wasm/build.mk wasm`.

WASM_GUEST_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/../..)
WASM_ROOT_DIR := $(abspath $(WASM_GUEST_DIR)/..)
# guest/Makefile's shared variables when included from it (paths there are relative
# to guest/, which is make's working directory); standalone defaults otherwise.
WASM_QUICKJS_DIR ?= $(abspath $(or $(QJS_SRC),$(WASM_ROOT_DIR)/out/quickjs/src))
WASM_OUT_DIR ?= $(abspath $(or $(GUEST_OUT),$(WASM_ROOT_DIR)/out/guest))/wasm
WASM_OBJ_DIR := $(WASM_OUT_DIR)/obj

WASM_CC ?= clang-19
comma := ,
WASM_SYSROOT_INCLUDE ?= /usr/include/wasm32-wasi
WASM_SYSROOT_LIB ?= /usr/lib/wasm32-wasi
# Shadow stack linked at the bottom of memory: the default 1 MiB scratch plus the two
# 128 KiB reserves of platform.c. A larger configured stack is laid out at init
# instead; a smaller link keeps every instance's memory small (V8 collects garbage
# by memory size).
WASM_STACK_BYTES ?= 1310720

WASM_QUICKJS_VERSION := $(shell cat $(WASM_QUICKJS_DIR)/VERSION 2>/dev/null)
WASM_QUICKJS_SRC := $(or $(QJS_FILES),quickjs.c libregexp.c libunicode.c cutils.c dtoa.c)
WASM_RUNTIME_SRC ?= $(sort $(wildcard $(WASM_GUEST_DIR)/runtime/*.c))
WASM_PLATFORM_SRC := $(WASM_GUEST_DIR)/platform/wasm/platform.c $(WASM_GUEST_DIR)/platform/common/libc_heap.c

# -nostdlibinc: Debian's clang also searches /usr/include for this target, which would
# mix the build host's glibc headers into the module. EMSCRIPTEN is the one switch
# that builds QuickJS without Atomics (no pthreads in wasi-libc); CONFIG_STACK_CHECK
# is defined explicitly because that switch would otherwise drop the stack limit too.
WASM_CFLAGS := --target=wasm32-wasi -nostdlibinc \
  -isystem $(WASM_SYSROOT_INCLUDE) -I$(WASM_GUEST_DIR)/platform/wasm/include \
  -O2 -g0 -fno-strict-aliasing -ffunction-sections -fdata-sections \
  -D_GNU_SOURCE -DEMSCRIPTEN -DCONFIG_STACK_CHECK \
  -DCONFIG_VERSION=\"$(WASM_QUICKJS_VERSION)\"
# QuickJS's collector passes its visitor as a function pointer (mark_children), which
# wasm turns into an indirect call per visited reference. Specializing functions for
# constant arguments, function addresses included, makes those direct calls the
# compiler can inline: JS_RunGC (after every call by default) takes ~40% less time.
WASM_QUICKJS_CFLAGS := $(WASM_CFLAGS) -O3 -mllvm -funcspec-on-address -mllvm -force-specialization -Wno-everything
WASM_OWN_CFLAGS := $(WASM_CFLAGS) -isystem $(WASM_QUICKJS_DIR) -I$(WASM_GUEST_DIR)/include -I$(WASM_GUEST_DIR)/runtime \
  -std=gnu11 -Wall -Wextra -Wno-unused-parameter -DAIRLOCK_WEBAPI_EXTERNAL

# The allocator's entry points are wrapped by platform.c, which grows linear memory
# under the heap as it is used.
WASM_WRAPPED := airlock_malloc airlock_calloc airlock_realloc airlock_memalign
WASM_LDFLAGS := --target=wasm32-wasi -nostdlib \
  -Wl,--no-entry -Wl,--import-memory -Wl,--export=_initialize -Wl,--stack-first -Wl,-z,stack-size=$(WASM_STACK_BYTES) -Wl,--gc-sections \
  -Wl,--export=__stack_pointer -Wl,--strip-debug $(addprefix -Wl$(comma)--wrap=,$(WASM_WRAPPED)) \
  $(WASM_SYSROOT_LIB)/crt1-reactor.o -L$(WASM_SYSROOT_LIB) -lc \
  $(shell $(WASM_CC) --target=wasm32-wasi -print-libgcc-file-name)

WASM_QUICKJS_OBJ := $(addprefix $(WASM_OBJ_DIR)/quickjs/,$(WASM_QUICKJS_SRC:.c=.o))
WASM_OWN_OBJ := $(patsubst $(WASM_GUEST_DIR)/%.c,$(WASM_OBJ_DIR)/%.o,$(WASM_RUNTIME_SRC) $(WASM_PLATFORM_SRC))
WASM_HEADERS := $(WASM_GUEST_DIR)/include/abi.h $(wildcard $(WASM_GUEST_DIR)/runtime/*.h)

.PHONY: wasm
all: wasm
wasm: $(WASM_OUT_DIR)/airlock-guest.wasm

# Relinked when this file changes too: the link flags decide the module's imports
# (--import-memory), which the worker depends on.
# The Web API sources ride in a custom section (scripts/wasm-add-section.mjs), out of
# linear memory: static data there is copied by every restore.
WASM_WEBAPI_BLOB ?= $(abspath $(or $(WEBAPI_BLOB),$(WASM_ROOT_DIR)/out/guest/webapi-prelude.bin))
$(WASM_OUT_DIR)/airlock-guest.wasm: $(WASM_QUICKJS_OBJ) $(WASM_OWN_OBJ) $(WASM_GUEST_DIR)/platform/wasm/build.mk $(WASM_WEBAPI_BLOB) $(WASM_ROOT_DIR)/scripts/wasm-add-section.mjs
	@mkdir -p $(@D)
	$(WASM_CC) -o $@.tmp $(filter %.o,$^) $(WASM_LDFLAGS)
	node $(WASM_ROOT_DIR)/scripts/wasm-add-section.mjs $@.tmp airlock.webapi $(WASM_WEBAPI_BLOB)
	mv $@.tmp $@

$(WASM_OBJ_DIR)/quickjs/%.o: $(WASM_QUICKJS_DIR)/%.c
	@mkdir -p $(@D)
	$(WASM_CC) $(WASM_QUICKJS_CFLAGS) -c $< -o $@

$(WASM_OBJ_DIR)/%.o: $(WASM_GUEST_DIR)/%.c $(WASM_HEADERS)
	@mkdir -p $(@D)
	$(WASM_CC) $(WASM_OWN_CFLAGS) -c $< -o $@
