// store.ts — persistent snapshots: an OCI image-layout directory (oci-layout,
// index.json, blobs/sha256/<digest>) holding one manifest per tag; its config blob is
// Airlock's schema-versioned snapshot metadata, its layers the engine templates' CPU
// state and guest memory. Files are written 0600 in 0700 directories (they hold tenant
// data). Reading treats every file as hostile: sizes are bounded before a byte is
// read, every blob's digest is verified, metadata is schema-checked, and the tier's
// importTemplate() refuses another ABI, guest image or layout.
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { chmod, lstat, mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { AirlockError, InternalError, InvalidArgumentError } from '../errors.js';
import type { EngineTemplate, SerializedTemplate } from '../engine/engine.js';
import { sizeLimits } from '../validate.js';
import { SnapshotContent } from './content.js';
import { withIndexLock } from './index-lock.js';
import { templateSupport } from './tiers.js';

/** The metadata schema this Airlock writes and reads; another is refused. */
export const SNAPSHOT_SCHEMA_VERSION = 1;
export const MEDIA_TYPES = {
  index: 'application/vnd.oci.image.index.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  artifact: 'application/vnd.airlock.snapshot.v1',
  config: 'application/vnd.airlock.snapshot.config.v1+json',
  cpuState: 'application/vnd.airlock.snapshot.cpu-state.v1',
  memory: 'application/vnd.airlock.snapshot.memory.v1',
} as const;
const REF_ANNOTATION = 'org.opencontainers.image.ref.name';

const KiB = 1024;
const MiB = 1024 * KiB;
/** Bounds on what is read before anything is parsed. */
const LIMITS = {
  layout: 4 * KiB,
  index: 4 * MiB,
  manifest: 64 * KiB,
  /** Staged handler and module sources live here. */
  config: 64 * MiB,
  cpuState: 1 * MiB,
  /** Beyond the guest's own sizes: the image, page tables, static data. */
  memorySlack: 64 * MiB,
  /** Ranges one template may list. */
  ranges: 1 << 16,
} as const;

const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

// --- schemas ------------------------------------------------------------------------

const descriptor = z.object({
  mediaType: z.string().max(256),
  digest: z.string().regex(DIGEST),
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  annotations: z.record(z.string().max(256), z.string().max(1024)).optional(),
});

const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.literal(MEDIA_TYPES.index).optional(),
  manifests: z.array(descriptor).max(100_000),
});

const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.literal(MEDIA_TYPES.manifest),
  artifactType: z.literal(MEDIA_TYPES.artifact),
  config: descriptor.extend({ mediaType: z.literal(MEDIA_TYPES.config) }),
  layers: z.array(descriptor).min(2).max(4),
});

const u32 = z.number().int().min(0).max(0xffff_ffff);
const within = (limits: { min: number; max: number }) => z.number().int().min(limits.min).max(limits.max);
const name = z.string().min(1).max(4096);

const templateRef = z.object({
  /** Index of the CPU-state layer in the manifest's layers. */
  cpuStateLayer: z.number().int().min(0).max(3),
  memoryLayer: z.number().int().min(0).max(3),
  /** Where each run of the memory layer goes, in layer order. */
  ranges: z.array(z.object({ offset: z.number().int().min(0).max(2 ** 48), length: z.number().int().min(0).max(2 ** 40) })).max(LIMITS.ranges),
});

const configSchema = z.strictObject({
  airlockSnapshot: z.literal(SNAPSHOT_SCHEMA_VERSION),
  kind: z.enum(['jsSandbox', 'loadedJsSandbox']),
  backend: z.enum(['kvm', 'wasm']),
  abiVersion: u32,
  imageSha256: z.string().regex(/^[0-9a-f]{64}$/),
  // The builder's own bounds: the memory layer's read limit is derived from these.
  config: z.strictObject({
    heapSize: within(sizeLimits.heap),
    stackSize: within(sizeLimits.scratch),
    inputSize: within(sizeLimits.inputBuffer),
    outputSize: within(sizeLimits.outputBuffer),
    consoleLimit: within(sizeLimits.consoleLimit),
  }),
  requirements: z.strictObject({
    hostFunctions: z.array(z.strictObject({ module: z.string().regex(/^host:.{1,256}$/s), functions: z.array(name).max(10_000) })).max(10_000),
    moduleLoader: z.literal('unknown'),
  }),
  staged: z
    .strictObject({
      handlers: z.array(z.tuple([name, z.string()])).max(100_000),
      modules: z.array(z.strictObject({ namespace: name, name, source: z.string() })).max(100_000),
    })
    .nullable(),
  /** The guest runtime options the runtime was loaded with (its state depends on them). */
  runtime: z.strictObject({
    hardened: z.strictObject({ timeResolutionUs: z.number().int().min(1).max(60_000_000), fixedTimeMs: z.number().int().nullable() }).nullable(),
    /** Decimal, below 2^64. */
    randomSeed: z.string().regex(/^(0|[1-9][0-9]{0,19})$/).refine((v) => BigInt(v) < 1n << 64n, 'the random seed must fit 64 bits').nullable(),
    binary: z.boolean(),
  }),
  state: templateRef,
  /** Absent when the state is the baseline (a jsSandbox snapshot). */
  baseline: templateRef.nullable(),
});
type SnapshotConfig = z.infer<typeof configSchema>;

function invalid(dir: string, what: string): InvalidArgumentError {
  return new InvalidArgumentError(`the snapshot in ${dir} is not usable: ${what}`);
}

function schemaProblem(e: z.ZodError): string {
  const issue = e.issues[0];
  return `${issue.path.join('.') || 'the document'}: ${issue.message}`;
}

// --- writing --------------------------------------------------------------------------

interface Blob {
  digest: string;
  size: number;
}

/** Writes `chunks` as one blob (skipped when it exists); returns its descriptor fields. */
async function writeBlob(dir: string, chunks: readonly Uint8Array[]): Promise<Blob> {
  const hash = createHash('sha256');
  let total = 0;
  for (const c of chunks) {
    hash.update(c);
    total += c.byteLength;
  }
  const hex = hash.digest('hex');
  const path = join(dir, 'blobs', 'sha256', hex);
  if (!(await holdsBlob(path, hex, total))) await writeAtomically(path, chunks);
  return { digest: `sha256:${hex}`, size: total };
}

/** Whether `path` is already a regular file with these bytes: a same-sized file with other
 *  bytes, or a link, is replaced (loadUnverified() would otherwise run what it holds). */
async function holdsBlob(path: string, hex: string, size: number): Promise<boolean> {
  const existing = await lstat(path).catch(() => undefined);
  if (!existing?.isFile() || existing.size !== size) return false;
  const hash = createHash('sha256');
  const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK).catch(() => undefined);
  if (!fh) return false;
  try {
    const chunk = Buffer.alloc(Math.min(size, 1 * MiB));
    let at = 0;
    while (at < size) {
      const { bytesRead } = await fh.read(chunk, 0, Math.min(chunk.length, size - at), at);
      if (bytesRead === 0) return false;
      hash.update(chunk.subarray(0, bytesRead));
      at += bytesRead;
    }
  } catch {
    return false;
  } finally {
    await fh.close();
  }
  return hash.digest('hex') === hex;
}

/** Writes a file under a temporary name and renames it over `path`, so a reader never
 *  sees half of it; created 0600 (they hold tenant data). */
async function writeAtomically(path: string, chunks: readonly Uint8Array[]): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  const fh = await open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
  try {
    for (const c of chunks) await fh.write(c);
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  await rename(tmp, path);
}

function jsonBytes(value: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

async function makeDirectory(path: string): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
}

/** Writes `content` under `tag`; resolves with the manifest's digest. */
export async function saveSnapshot(content: SnapshotContent, dir: string, tag: string): Promise<string> {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidArgumentError('the snapshot directory must be a non-empty string');
  if (typeof tag !== 'string' || !TAG.test(tag)) {
    throw new InvalidArgumentError(`the snapshot tag must be 1-128 characters of letters, digits, '.', '_' or '-', not starting with '.' or '-' (got ${JSON.stringify(tag)})`);
  }
  const support = templateSupport(content.backend);
  const state = support.exportTemplate(await content.stateTemplate());
  const baselineTemplate: EngineTemplate = await content.baselineTemplate();
  const sameBaseline = baselineTemplate === (await content.stateTemplate());
  const baseline = sameBaseline ? undefined : support.exportTemplate(baselineTemplate);
  if (baseline && (baseline.abiVersion !== state.abiVersion || baseline.imageSha256 !== state.imageSha256)) {
    throw new InternalError('the snapshot and its baseline come from different guest builds');
  }

  try {
    await makeDirectory(join(dir, 'blobs', 'sha256'));
    await chmod(dir, 0o700);
    const layers: (Blob & { mediaType: string })[] = [];
    const addTemplate = async (t: SerializedTemplate) => {
      const cpu = await writeBlob(dir, [t.cpuState]);
      layers.push({ mediaType: MEDIA_TYPES.cpuState, ...cpu });
      const mem = await writeBlob(dir, t.memory.map((r) => r.bytes));
      layers.push({ mediaType: MEDIA_TYPES.memory, ...mem });
      return {
        cpuStateLayer: layers.length - 2,
        memoryLayer: layers.length - 1,
        ranges: t.memory.map((r) => ({ offset: r.offset, length: r.bytes.byteLength })),
      };
    };
    const stateRef = await addTemplate(state);
    const baselineRef = baseline ? await addTemplate(baseline) : null;
    const config: SnapshotConfig = {
      airlockSnapshot: SNAPSHOT_SCHEMA_VERSION,
      kind: content.kind,
      backend: content.backend,
      abiVersion: state.abiVersion,
      imageSha256: state.imageSha256,
      config: { ...state.config },
      requirements: content.requirements,
      staged: content.staged ?? null,
      runtime: {
        hardened: content.runtimeOptions.hardened
          ? { timeResolutionUs: content.runtimeOptions.hardened.timeResolutionUs, fixedTimeMs: content.runtimeOptions.hardened.fixedTimeMs ?? null }
          : null,
        randomSeed: content.runtimeOptions.randomSeed === undefined ? null : content.runtimeOptions.randomSeed.toString(),
        binary: content.runtimeOptions.binary === true,
      },
      state: stateRef,
      baseline: baselineRef,
    };
    const configBlob = await writeBlob(dir, [jsonBytes(config)]);
    const manifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.manifest,
      artifactType: MEDIA_TYPES.artifact,
      config: { mediaType: MEDIA_TYPES.config, ...configBlob },
      layers,
    };
    const manifestBlob = await writeBlob(dir, [jsonBytes(manifest)]);

    await writeAtomically(join(dir, 'oci-layout'), [jsonBytes({ imageLayoutVersion: '1.0.0' })]);
    await withIndexLock(dir, async () => {
      const index = (await readIndex(dir).catch(() => undefined)) ?? { schemaVersion: 2 as const, mediaType: MEDIA_TYPES.index, manifests: [] };
      const manifests = index.manifests.filter((m) => m.annotations?.[REF_ANNOTATION] !== tag);
      manifests.push({ mediaType: MEDIA_TYPES.manifest, ...manifestBlob, annotations: { [REF_ANNOTATION]: tag } });
      await writeAtomically(join(dir, 'index.json'), [jsonBytes({ schemaVersion: 2, mediaType: MEDIA_TYPES.index, manifests })]);
    });
    return manifestBlob.digest;
  } catch (e) {
    if (e instanceof AirlockError) throw e;
    throw new InternalError(`cannot save the snapshot to ${dir}: ${(e as Error).message}`, { cause: e });
  }
}

// --- reading --------------------------------------------------------------------------

/** Reads a whole file of at most `limit` bytes (checked before reading). */
async function readBounded(path: string, limit: number, dir: string, what: string): Promise<Buffer> {
  // O_NONBLOCK: a FIFO planted in the layout would otherwise block open() (and a libuv
  // thread) until some writer came; the fstat below then refuses anything but a file.
  const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') throw invalid(dir, `${what} is missing`);
    throw e;
  });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw invalid(dir, `${what} is not a regular file`);
    if (st.size > limit) throw invalid(dir, `${what} is ${st.size} bytes, more than the ${limit} allowed`);
    const buf = Buffer.alloc(st.size);
    let at = 0;
    while (at < st.size) {
      const { bytesRead } = await fh.read(buf, at, st.size - at, at);
      if (bytesRead === 0) break;
      at += bytesRead;
    }
    if (at !== st.size) throw invalid(dir, `${what} changed while it was read`);
    return buf;
  } finally {
    await fh.close();
  }
}

function parseJson(bytes: Buffer, dir: string, what: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw invalid(dir, `${what} is not JSON`);
  }
}

async function readIndex(dir: string): Promise<z.infer<typeof indexSchema>> {
  const raw = parseJson(await readBounded(join(dir, 'index.json'), LIMITS.index, dir, 'index.json'), dir, 'index.json');
  const r = indexSchema.safeParse(raw);
  if (!r.success) throw invalid(dir, `index.json: ${schemaProblem(r.error)}`);
  return r.data;
}

/** Reads the blob a descriptor names, checking its size before and its digest after. */
async function readBlob(dir: string, d: { digest: string; size: number }, limit: number, what: string, verify = true): Promise<Buffer> {
  if (d.size > limit) throw invalid(dir, `${what} claims ${d.size} bytes, more than the ${limit} allowed`);
  const hex = d.digest.slice('sha256:'.length);
  const bytes = await readBounded(join(dir, 'blobs', 'sha256', hex), limit, dir, `${what} (${d.digest})`);
  if (bytes.length !== d.size) throw invalid(dir, `${what} is ${bytes.length} bytes but its descriptor says ${d.size}`);
  if (verify && createHash('sha256').update(bytes).digest('hex') !== hex) throw invalid(dir, `${what} does not match its digest ${d.digest} (the file was altered)`);
  return bytes;
}

/** Reads, verifies and imports the snapshot `ref` (a tag or a 'sha256:' digest). */
export async function loadSnapshot(dir: string, ref: string, verifyMemory: boolean): Promise<SnapshotContent> {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidArgumentError('the snapshot directory must be a non-empty string');
  if (typeof ref !== 'string' || !(TAG.test(ref) || DIGEST.test(ref))) {
    throw new InvalidArgumentError(`a snapshot is named by its tag or its 'sha256:<64 hex digits>' digest (got ${JSON.stringify(ref)})`);
  }
  try {
    const dirStat = await stat(dir).catch((e: NodeJS.ErrnoException) => {
      throw new InternalError(`cannot read the snapshot directory ${dir}: ${e.message}`, { cause: e });
    });
    if (!dirStat.isDirectory()) throw new InternalError(`the snapshot directory ${dir} is not a directory`);
    const layout = parseJson(await readBounded(join(dir, 'oci-layout'), LIMITS.layout, dir, 'oci-layout'), dir, 'oci-layout');
    if ((layout as { imageLayoutVersion?: unknown })?.imageLayoutVersion !== '1.0.0') throw invalid(dir, 'oci-layout is not version 1.0.0');
    const index = await readIndex(dir);
    const entry = DIGEST.test(ref)
      ? index.manifests.find((m) => m.digest === ref)
      : [...index.manifests].reverse().find((m) => m.annotations?.[REF_ANNOTATION] === ref);
    if (!entry) throw invalid(dir, `it holds no snapshot ${JSON.stringify(ref)}`);
    if (entry.mediaType !== MEDIA_TYPES.manifest) throw invalid(dir, `${ref} is not an image manifest`);

    const manifestRaw = parseJson(await readBlob(dir, entry, LIMITS.manifest, 'the manifest'), dir, 'the manifest');
    const m = manifestSchema.safeParse(manifestRaw);
    if (!m.success) throw invalid(dir, `the manifest: ${schemaProblem(m.error)}`);
    const manifest = m.data;
    const c = configSchema.safeParse(parseJson(await readBlob(dir, manifest.config, LIMITS.config, 'the snapshot metadata'), dir, 'the snapshot metadata'));
    if (!c.success) throw invalid(dir, `the snapshot metadata: ${schemaProblem(c.error)}`);
    const meta = c.data;
    if ((meta.kind === 'jsSandbox') !== (meta.baseline === null)) throw invalid(dir, 'a jsSandbox snapshot has no separate baseline, a loadedJsSandbox snapshot has one');
    if (meta.kind === 'loadedJsSandbox' && meta.staged !== null) throw invalid(dir, 'a loadedJsSandbox snapshot has no staged sources');
    const support = templateSupport(meta.backend);

    const guestBytes = meta.config.heapSize + meta.config.stackSize + meta.config.inputSize + meta.config.outputSize + LIMITS.memorySlack;
    const readTemplate = async (t: z.infer<typeof templateRef>, which: string): Promise<EngineTemplate> => {
      const cpuLayer = manifest.layers[t.cpuStateLayer];
      const memLayer = manifest.layers[t.memoryLayer];
      if (cpuLayer?.mediaType !== MEDIA_TYPES.cpuState) throw invalid(dir, `the ${which}'s CPU state layer is missing`);
      if (memLayer?.mediaType !== MEDIA_TYPES.memory) throw invalid(dir, `the ${which}'s memory layer is missing`);
      const cpuState = await readBlob(dir, cpuLayer, LIMITS.cpuState, `the ${which}'s CPU state`);
      const memory = await readBlob(dir, memLayer, guestBytes, `the ${which}'s memory`, verifyMemory);
      let at = 0;
      const ranges = t.ranges.map((r) => {
        const bytes = memory.subarray(at, at + r.length);
        at += r.length;
        return { offset: r.offset, bytes };
      });
      if (at !== memory.length) throw invalid(dir, `the ${which}'s memory ranges cover ${at} bytes of a ${memory.length}-byte layer`);
      const serialized: SerializedTemplate = {
        backend: meta.backend,
        abiVersion: meta.abiVersion,
        imageSha256: meta.imageSha256,
        config: { ...meta.config },
        cpuState: new Uint8Array(cpuState),
        memory: ranges,
      };
      return support.importTemplate(serialized);
    };
    const state = await readTemplate(meta.state, 'snapshot');
    let baseline: EngineTemplate | undefined;
    try {
      baseline = meta.baseline ? await readTemplate(meta.baseline, 'baseline') : undefined;
    } catch (e) {
      state.release();
      throw e;
    }
    const content = new SnapshotContent({
      kind: meta.kind,
      backend: meta.backend,
      config: meta.config,
      requirements: meta.requirements,
      staged: meta.staged ?? undefined,
      runtimeOptions: {
        hardened: meta.runtime.hardened
          ? { timeResolutionUs: meta.runtime.hardened.timeResolutionUs, fixedTimeMs: meta.runtime.hardened.fixedTimeMs ?? undefined }
          : undefined,
        randomSeed: meta.runtime.randomSeed === null ? undefined : BigInt(meta.runtime.randomSeed),
        binary: meta.runtime.binary,
      },
      state: async () => ({ template: state }),
      baseline: baseline ? async () => ({ template: baseline }) : undefined,
    });
    // Adopted now, so the content owns (and eventually releases) both.
    await content.stateTemplate();
    await content.baselineTemplate();
    return content;
  } catch (e) {
    if (e instanceof AirlockError) throw e;
    throw new InternalError(`cannot load the snapshot from ${dir}: ${(e as Error).message}`, { cause: e });
  }
}
