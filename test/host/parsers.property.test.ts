// parsers.property.test.ts — fast-check properties of the addon's parsers reachable from
// JavaScript: the guest image header (host/src/layout.cc) and the Vm config (sizeField
// in host/src/addon.cc). Random and mutated inputs must be refused with ERR_INVALID_ARG
// or give a VM that boots (or stops with a guest error) and disposes; never a crash,
// a hang or another kind of error.
import fc from 'fast-check';
import { expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { buildImage, defaultConfig, encodeMessage, loadAddon, programs, type NativeVm } from './raw-guest.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const U64_MAX = (1n << 64n) - 1n;

type Outcome = 'refused' | 'booted' | 'stopped';

/** Tallies outcomes, so a test can check its generator reached both refusals and VMs. */
function tally(): { count(o: Outcome): void; seen: Record<Outcome, number> } {
  const seen: Record<Outcome, number> = { refused: 0, booted: 0, stopped: 0 };
  return { seen, count: (o) => void seen[o]++ };
}

/**
 * Creates a VM from hostile input and checks the only acceptable answers: a synchronous
 * ERR_INVALID_ARG, or a VM whose boot resolves or fails with a guest error and which then
 * disposes. `check` runs on a booted VM before it is disposed.
 */
async function constructAndBoot(image: unknown, config: unknown, check?: (vm: NativeVm) => Promise<void>): Promise<Outcome> {
  const { Vm } = loadAddon();
  let vm: NativeVm;
  try {
    // A guest that makes a host call during boot has strayed from the echo program: stop it.
    vm = new (Vm as unknown as new (...args: unknown[]) => NativeVm)(image, config, () => vm.kill());
  } catch (e) {
    const err = e as Error & { code?: unknown };
    expect(err).toBeInstanceOf(Error);
    expect(err.code).toBe('ERR_INVALID_ARG');
    expect(err.message.length).toBeGreaterThan(0);
    return 'refused';
  }
  // Only a guard against a mutated entry point that loops: boot answers in milliseconds.
  const guard = setTimeout(() => vm.kill(), 10_000);
  try {
    try {
      await vm.boot();
    } catch (e) {
      expect(['ERR_GUEST_ABORT', 'ERR_CANCELLED']).toContain((e as { code?: unknown }).code);
      return 'stopped';
    } finally {
      clearTimeout(guard);
    }
    if (check) await check(vm);
    return 'booted';
  } finally {
    await vm.dispose();
  }
}

// ---------------------------------------------------------------------------
// Image headers.

const u64 = fc.bigInt({ min: 0n, max: U64_MAX });
const u32 = fc.integer({ min: 0, max: 0xffffffff });

/** A header word: mostly the valid one, else an edge near it, a notable address, or noise. */
function headerWord(valid: bigint): fc.Arbitrary<bigint> {
  const page = BigInt(abi.AIRLOCK_PAGE_SIZE);
  const huge = BigInt(abi.AIRLOCK_HUGE_PAGE_SIZE);
  return fc.oneof(
    { weight: 28, arbitrary: fc.constant(valid) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(-huge, -page, -8n, -1n, 1n, 7n, 8n, page, 2n * page, huge).map((d) => BigInt.asUintN(64, valid + d)),
    },
    {
      weight: 1,
      arbitrary: fc.constantFrom(0n, U64_MAX, 1n << 63n, BigInt(abi.AIRLOCK_IMAGE_BASE), 32n << 30n, 64n << 30n, U64_MAX - 0xfffn),
    },
    { weight: 1, arbitrary: u64 },
  );
}

const BASE = BigInt(abi.AIRLOCK_IMAGE_BASE);
/**
 * Leaves out a bss_end the parser accepts far above the image: boot commits the whole
 * image region, so one such header would take gigabytes of this machine (layout.cc
 * accepts up to 32 GiB; a bound on it belongs with the host's memory limits).
 */
const withinAcceptedSpan = (bssEnd: bigint) => bssEnd <= BASE + (64n << 20n) || bssEnd - BASE > 32n << 30n;
const honest = buildImage(programs.echo);
const honestField = (off: number) => honest.readBigUInt64LE(off);

/** A header with each field valid, off by a little, or anything; a file cut short or grown. */
const mutatedHeaderImage = fc
  .record({
    magic: fc.oneof({ weight: 30, arbitrary: fc.constant(abi.AIRLOCK_IMAGE_MAGIC) }, { weight: 1, arbitrary: u32 }),
    abiVersion: fc.oneof(
      { weight: 30, arbitrary: fc.constant(abi.AIRLOCK_ABI_VERSION) },
      { weight: 1, arbitrary: fc.constantFrom(0, abi.AIRLOCK_ABI_VERSION - 1, abi.AIRLOCK_ABI_VERSION + 1, 0xffffffff) },
    ),
    loadAddr: headerWord(honestField(abi.AIRLOCK_IMG_OFF_LOAD_ADDR)),
    entry: headerWord(honestField(abi.AIRLOCK_IMG_OFF_ENTRY)),
    bssEnd: headerWord(honestField(abi.AIRLOCK_IMG_OFF_BSS_END)).filter(withinAcceptedSpan),
    dataStart: headerWord(honestField(abi.AIRLOCK_IMG_OFF_DATA_START)),
    control: headerWord(honestField(abi.AIRLOCK_IMG_OFF_CONTROL)),
    tlsBlock: headerWord(honestField(abi.AIRLOCK_IMG_OFF_TLS_BLOCK)),
    // The file's own size, and whether file_end tells it truthfully.
    size: fc.oneof(
      { weight: 14, arbitrary: fc.constant(honest.length) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: honest.length }) },
      { weight: 1, arbitrary: fc.integer({ min: honest.length, max: honest.length + 3 * abi.AIRLOCK_PAGE_SIZE }) },
    ),
    fileEnd: fc.option(headerWord(honestField(abi.AIRLOCK_IMG_OFF_FILE_END)), { freq: 8, nil: undefined }),
  })
  .map(({ size, fileEnd, ...overrides }) => {
    const img = buildImage(programs.echo, { ...overrides, fileEnd: fileEnd ?? BASE + BigInt(size) });
    return size <= img.length ? img.subarray(0, size) : Buffer.concat([img, Buffer.alloc(size - img.length)]);
  });

/** Raw byte and word writes anywhere in the header of a valid image: bytes nudged or replaced, words replaced. */
const headerByteWrites = fc
  .array(
    fc.oneof(
      fc.record({ at: fc.integer({ min: 0, max: abi.AIRLOCK_IMG_HEADER_SIZE - 1 }), nudge: fc.integer({ min: -16, max: 16 }) }),
      fc.record({ at: fc.integer({ min: 0, max: abi.AIRLOCK_IMG_HEADER_SIZE - 1 }), byte: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ word: fc.integer({ min: 0, max: abi.AIRLOCK_IMG_HEADER_SIZE / 8 - 1 }), value: u64 }),
    ),
    { minLength: 1, maxLength: 3 },
  )
  .map((writes) => {
    const img = Buffer.from(honest);
    for (const w of writes) {
      if ('nudge' in w) img[w.at] = (img[w.at] + w.nudge) & 0xff;
      else if ('byte' in w) img[w.at] = w.byte;
      else img.writeBigUInt64LE(w.value, w.word * 8);
    }
    return img;
  })
  .filter((img) => withinAcceptedSpan(img.readBigUInt64LE(abi.AIRLOCK_IMG_OFF_BSS_END)));

// ---------------------------------------------------------------------------
// Vm config.

/** Values of the wrong type or range for a size: sizeField must refuse each one. */
const notASize = fc.oneof(
  fc.constantFrom(-1, -0.5, 0.5, NaN, Infinity, -Infinity, 2 ** 53, 2 ** 64, Number.MAX_VALUE, -Number.MAX_VALUE),
  fc.double().filter((d) => !Number.isInteger(d) || d < 0),
  fc.string({ maxLength: 8 }),
  fc.constantFrom(null, true, false, '16', [] as unknown, {} as unknown),
  fc.bigInt({ min: 0n, max: 1n << 40n }),
);

const maybe = <T>(valid: fc.Arbitrary<T>, weight = 12) =>
  fc.oneof({ weight, arbitrary: valid.map((v) => ({ v, valid: true })) }, { weight: 1, arbitrary: notASize.map((v) => ({ v, valid: false })) });

/** A value from `usual`, or now and then one of `edges`. */
const mostly = (usual: fc.Arbitrary<number>, ...edges: number[]) =>
  fc.oneof({ weight: 8, arbitrary: usual }, { weight: 1, arbitrary: fc.constantFrom(...edges) });

/** A config: each size usually valid (buffers small enough to commit cheaply), sometimes not. */
const vmConfig = fc
  .record({
    // Edges of the layout's ranges ([16, 1 GiB] for buffers, [1, 64 GiB] for memory) are
    // refused or accepted without committing their size; valid buffers stay small here
    // because boot commits them.
    heapSize: maybe(mostly(fc.integer({ min: 1, max: 256 * MiB }), 64 * GiB, 64 * GiB + 1, 0)),
    stackSize: maybe(mostly(fc.integer({ min: 1, max: 16 * MiB }), 64 * GiB + 1, 0)),
    inputSize: maybe(mostly(fc.integer({ min: 16, max: 2 * MiB }), 15, 0, GiB + 1)),
    outputSize: maybe(mostly(fc.integer({ min: 16, max: 2 * MiB }), 15, 0, GiB + 1)),
    consoleLimit: maybe(mostly(fc.integer({ min: 0, max: 1 * MiB }), GiB + 1)),
    vcpuSpinUs: fc.option(maybe(mostly(fc.integer({ min: 0, max: 200 }), 10_001), 6), { nil: undefined }),
  })
  .map((fields) => {
    const config: Record<string, unknown> = {};
    // A small valid config must give a VM: buffers of at least one message, memory that fits.
    let expectVm = true;
    for (const [name, f] of Object.entries(fields)) {
      if (f === undefined) continue;
      config[name] = f.v;
      const n = f.v as number;
      const small =
        f.valid &&
        {
          heapSize: n >= 1 && n <= 256 * MiB,
          stackSize: n >= 1 && n <= 16 * MiB,
          inputSize: n >= 16 && n <= 2 * MiB,
          outputSize: n >= 16 && n <= 2 * MiB,
          consoleLimit: n <= 1 * MiB,
          vcpuSpinUs: n <= 200,
        }[name];
      if (!small) expectVm = false;
    }
    return { config, expectVm };
  });

describeKvm('host addon parsers: properties', () => {
  it('refuses a mutated image header with ERR_INVALID_ARG or runs it', async () => {
    const t = tally();
    await fc.assert(
      fc.asyncProperty(mutatedHeaderImage, async (img) => {
        t.count(await constructAndBoot(img, defaultConfig));
      }),
      { numRuns: 250 },
    );
    // The generator must reach both the parser's refusals and images it accepts.
    expect(t.seen.refused).toBeGreaterThan(0);
    expect(t.seen.booted).toBeGreaterThan(0);
  });

  it('refuses raw writes into a valid header with ERR_INVALID_ARG or runs them', async () => {
    const t = tally();
    await fc.assert(
      fc.asyncProperty(headerByteWrites, async (img) => {
        t.count(await constructAndBoot(img, defaultConfig));
      }),
      // The parser refuses almost every raw write, in microseconds: many runs reach the few it accepts.
      { numRuns: 2000 },
    );
    expect(t.seen.refused).toBeGreaterThan(0);
    expect(t.seen.booted + t.seen.stopped).toBeGreaterThan(0);
  });

  it('refuses images that are not a header at all', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 256 }), async (bytes) => {
        expect(await constructAndBoot(Buffer.from(bytes), defaultConfig)).toBe('refused');
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a config with ERR_INVALID_ARG or gives a VM that answers', async () => {
    const t = tally();
    const request = encodeMessage(abi.AIRLOCK_MSG_CALL, 0, []);
    await fc.assert(
      fc.asyncProperty(vmConfig, async ({ config, expectVm }) => {
        const outcome = await constructAndBoot(honest, config, async (vm) => {
          // The echo guest answers with the request: the buffers the config sized work.
          const { output } = await vm.send(request);
          expect(output.equals(request)).toBe(true);
        });
        if (expectVm) expect(outcome).toBe('booted');
        t.count(outcome);
      }),
      { numRuns: 150 },
    );
    expect(t.seen.refused).toBeGreaterThan(0);
    expect(t.seen.booted).toBeGreaterThan(0);
  });

  it('refuses constructor arguments of the wrong kind', () => {
    const { Vm } = loadAddon();
    const anything = fc.oneof(fc.anything(), fc.constantFrom(undefined, null, 0, 'image', [] as unknown));
    fc.assert(
      fc.property(fc.oneof(anything, fc.constant(honest)), anything, fc.oneof(anything, fc.constant(() => {})), (image, config, onHostCall) => {
        // An honest image and a callback with a config that is not one: still refused.
        expect(() => new (Vm as unknown as new (...args: unknown[]) => NativeVm)(image, config, onHostCall)).toThrow(
          expect.objectContaining({ code: 'ERR_INVALID_ARG' }),
        );
      }),
      { numRuns: 500 },
    );
  });
});
