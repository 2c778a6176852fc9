# platform/kvm/build.mk — the x86_64 micro-VM image: static musl, no start files, a
# flat binary linked at AIRLOCK_IMAGE_BASE by image.ld: out/guest/kvm/airlock-guest.img.
KVM_OBJ := $(GUEST_OUT)/obj/kvm
KVM_ELF := $(GUEST_OUT)/kvm/airlock-guest.elf
KVM_IMG := $(GUEST_OUT)/kvm/airlock-guest.img
KVM_CC ?= musl-gcc
KVM_CFLAGS := -O2 -g -MMD -MP -fno-stack-protector -fno-pie -fno-asynchronous-unwind-tables \
              -ffunction-sections -fdata-sections $(GUEST_INCLUDES)
KVM_LDFLAGS := -static -nostartfiles -no-pie -Wl,--gc-sections -Wl,-T,platform/kvm/image.ld -Wl,--build-id=none
# Symbols the image must take from platform/kvm/libc.c or platform/common/libc_heap.c,
# never from libc.
KVM_OVERRIDES := malloc free calloc realloc malloc_usable_size aligned_alloc memalign posix_memalign \
                 gettimeofday clock_gettime time localtime_r localtime abort __assert_fail
KVM_OBJS := $(patsubst %.c,$(KVM_OBJ)/qjs/%.o,$(QJS_FILES)) \
            $(patsubst %.c,$(KVM_OBJ)/runtime/%.o,$(RUNTIME_NAMES)) \
            $(KVM_OBJ)/platform/kvm.o $(KVM_OBJ)/platform/libc.o $(KVM_OBJ)/platform/start.o \
            $(KVM_OBJ)/platform/common/libc_heap.o

all: $(KVM_IMG)

$(KVM_OBJ)/qjs/%.o: $(QJS_SRC)/%.c | check-quickjs
	@mkdir -p $(@D)
	$(KVM_CC) $(KVM_CFLAGS) $(QJS_DEFS) -c $< -o $@

$(KVM_OBJ)/runtime/%.o: runtime/%.c
	@mkdir -p $(@D)
	$(KVM_CC) $(KVM_CFLAGS) $(GUEST_WARNINGS) -c $< -o $@

$(KVM_OBJ)/platform/%.o: platform/kvm/%.c
	@mkdir -p $(@D)
	$(KVM_CC) $(KVM_CFLAGS) $(GUEST_WARNINGS) -c $< -o $@

$(KVM_OBJ)/platform/common/%.o: platform/common/%.c
	@mkdir -p $(@D)
	$(KVM_CC) $(KVM_CFLAGS) $(GUEST_WARNINGS) -c $< -o $@

$(KVM_OBJ)/platform/start.o: platform/kvm/start.S
	@mkdir -p $(@D)
	$(KVM_CC) -c $< -o $@

# The trace (-y) names the object that defines each override; any libc member
# defining one of them fails the build.
$(KVM_ELF): $(KVM_OBJS) platform/kvm/image.ld
	@mkdir -p $(@D)
	$(KVM_CC) $(KVM_LDFLAGS) -o $@ $(KVM_OBJS) $(addprefix -Wl$(comma)-y$(comma),$(KVM_OVERRIDES)) > $@.trace 2>&1 \
	  || { cat $@.trace >&2; exit 1; }
	@if grep -E 'libc\.a\([^)]*\): definition of' $@.trace; then \
	  echo "error: the KVM image takes the symbols above from libc (syscalls/libc heap); define them in platform/kvm/libc.c or platform/common/libc_heap.c" >&2; \
	  rm -f $@; exit 1; fi
	@for s in $(KVM_OVERRIDES); do grep -qE "(libc|libc_heap)\.o: definition of $$s\$$" $@.trace || { \
	  echo "error: $$s is not defined by platform/kvm/libc.c or platform/common/libc_heap.c in the KVM image" >&2; \
	  rm -f $@; exit 1; }; done

$(KVM_IMG): $(KVM_ELF)
	objcopy -O binary $< $@

comma := ,

-include $(KVM_OBJS:.o=.d)
