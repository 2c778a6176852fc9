/* crypto.h — the entry point of the built-in `crypto` module (crypto.c) for the module loader. */
#ifndef AIRLOCK_CRYPTO_H
#define AIRLOCK_CRYPTO_H

#include "quickjs.h"

/* The bare specifier user code imports it by: `import { createHmac } from 'crypto'`. */
#define CRYPTO_MODULE_NAME "crypto"

/* Creates the native module `name` in ctx, registering the Hmac class in the runtime on
 * first use. NULL with an exception pending on failure, as the module loader expects. */
JSModuleDef *crypto_module_new(JSContext *ctx, const char *name);

#endif /* AIRLOCK_CRYPTO_H */
