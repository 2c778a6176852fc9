# platform/native/build.mk — the runtime as a Linux program (gcc + glibc) speaking
# the framed stdin/stdout protocol: out/guest/native/airlock-native.
NATIVE_OBJ := $(GUEST_OUT)/obj/native
NATIVE_BIN := $(GUEST_OUT)/native/airlock-native
NATIVE_CC ?= gcc
NATIVE_CFLAGS := -O2 -g -MMD -MP $(GUEST_INCLUDES)
NATIVE_OBJS := $(patsubst %.c,$(NATIVE_OBJ)/qjs/%.o,$(QJS_FILES)) \
               $(patsubst %.c,$(NATIVE_OBJ)/runtime/%.o,$(RUNTIME_NAMES)) \
               $(NATIVE_OBJ)/platform/native.o

all: $(NATIVE_BIN)

$(NATIVE_OBJ)/qjs/%.o: $(QJS_SRC)/%.c | check-quickjs
	@mkdir -p $(@D)
	$(NATIVE_CC) $(NATIVE_CFLAGS) $(QJS_DEFS) -c $< -o $@

$(NATIVE_OBJ)/runtime/%.o: runtime/%.c
	@mkdir -p $(@D)
	$(NATIVE_CC) $(NATIVE_CFLAGS) $(GUEST_WARNINGS) -c $< -o $@

$(NATIVE_OBJ)/platform/%.o: platform/native/%.c
	@mkdir -p $(@D)
	$(NATIVE_CC) $(NATIVE_CFLAGS) $(GUEST_WARNINGS) -c $< -o $@

$(NATIVE_BIN): $(NATIVE_OBJS)
	@mkdir -p $(@D)
	$(NATIVE_CC) -o $@ $(NATIVE_OBJS) -lm

-include $(NATIVE_OBJS:.o=.d)
