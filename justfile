# justfile — the entry point for every task. npm scripts call the same steps.
# (`just` comes from the npm package rust-just: run `npm run setup` once, then `npx just <recipe>`.)

# List the recipes.
default:
    @just --list

# Install and build everything a fresh Debian machine needs (idempotent, fast when current).
setup:
    bash scripts/setup.sh

# Rebuild what changed (same as setup: every step is incremental).
build: setup

# The main job: the quick-start example inside a KVM micro-VM (or WebAssembly without KVM).
demo: setup
    npx tsx examples/simple.ts

# Run the whole test suite.
test: setup
    npx vitest run

# The host tests against an AddressSanitizer/UBSan build of the addon (out/addon-asan).
test-sanitized: setup
    bash scripts/test-sanitized.sh

# Measure every contender side by side and write docs/BENCHMARKS.md and docs/benchmarks.json.
# isolated-vm is installed for the bench only (out/bench-deps; the first time takes minutes).
bench: setup
    bash scripts/bench-deps.sh
    npx tsx test/bench/run.ts

# Type-check everything (src, tests, examples, scripts).
lint: setup
    npx tsc -p tsconfig.json --noEmit

# Format C/C++ with clang-format-19 when installed (TypeScript follows the house style by hand).
fmt:
    find guest/runtime guest/platform host -name '*.[ch]' -o -name '*.cc' | xargs -r clang-format-19 -i

# Exactly what CI runs.
ci:
    bash .ci/run
