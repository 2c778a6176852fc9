// snapshot-files.test.ts — persistent snapshots: save() to an OCI image-layout
// directory and Snapshot.load() back, file modes, and loading hostile files (altered
// blobs, oversize claims, wrong schema, ABI or guest image), which must fail with
// ERR_INVALID_ARG before anything reaches a guest.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { HostFunctionModule, SandboxBuilder, Snapshot } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const dirs: string[] = [];
async function snapshotDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'airlock-snapshots-'));
  dirs.push(d);
  return join(d, 'layout');
}
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const counter = 'let count = 0; function handler(e) { e.count = ++count; return e; }';

type Json = Record<string, any>;
const blobPath = (dir: string, digest: string) => join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length));
async function readJson(path: string): Promise<Json> {
  return JSON.parse(await readFile(path, 'utf8'));
}
async function putBlob(dir: string, bytes: Buffer): Promise<{ digest: string; size: number }> {
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  await writeFile(blobPath(dir, digest), bytes);
  return { digest, size: bytes.length };
}

/** Rewrites the metadata of `tag` through `edit`, keeping every digest consistent (a
 *  forged snapshot, not a corrupted one). */
async function forgeMetadata(dir: string, tag: string, edit: (meta: Json, manifest: Json) => void): Promise<void> {
  const index = await readJson(join(dir, 'index.json'));
  const entry = index.manifests.find((m: Json) => m.annotations['org.opencontainers.image.ref.name'] === tag);
  const manifest = await readJson(blobPath(dir, entry.digest));
  const meta = await readJson(blobPath(dir, manifest.config.digest));
  edit(meta, manifest);
  Object.assign(manifest.config, await putBlob(dir, Buffer.from(JSON.stringify(meta))));
  Object.assign(entry, await putBlob(dir, Buffer.from(JSON.stringify(manifest))));
  await writeFile(join(dir, 'index.json'), JSON.stringify(index));
}

it('refuses names and directories it cannot use', async () => {
  await expect(Snapshot.load(join(tmpdir(), 'airlock-no-such-layout'), 'missing')).rejects.toMatchObject({ code: 'ERR_INTERNAL' });
  await expect(Snapshot.load(tmpdir(), '../escape')).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  await expect(Snapshot.load(tmpdir(), 'sha256:1234')).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
});

it('refuses a FIFO in place of a file without waiting for a writer', async () => {
  const dir = await snapshotDir();
  await mkdir(dir, { recursive: true });
  execFileSync('mkfifo', [join(dir, 'oci-layout')]);
  await expect(Snapshot.load(dir, 'any')).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(/oci-layout is not a regular file/) });
});

describeEachBackend('persistent snapshots', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function loadedCounter(builder = h.builder()) {
    const js = await (await builder.build()).loadRuntime();
    js.addHandler('counter', counter);
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    return loaded;
  }

  it('saves a loaded sandbox with private file modes and restores it by tag or digest', async () => {
    const dir = await snapshotDir();
    const loaded = await loadedCounter();
    expect(await loaded.callHandler('counter', {})).toEqual({ count: 1 });
    const digest = await (await loaded.snapshot()).save(dir, 'application-ready');
    expect(digest).toMatch(/^sha256:[0-9a-f]{64}$/);

    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    expect((await stat(join(dir, 'blobs', 'sha256'))).mode & 0o777).toBe(0o700);
    for (const f of ['index.json', 'oci-layout']) expect((await stat(join(dir, f))).mode & 0o777).toBe(0o600);
    for (const f of await readdir(join(dir, 'blobs', 'sha256'))) expect((await stat(join(dir, 'blobs', 'sha256', f))).mode & 0o777).toBe(0o600);
    const index = await readJson(join(dir, 'index.json'));
    expect(index.manifests).toHaveLength(1);
    expect(index.manifests[0].digest).toBe(digest);

    for (const ref of ['application-ready', digest]) {
      const persisted = await Snapshot.load(dir, ref);
      expect(persisted.kind).toBe('loadedJsSandbox');
      const restored = await (await new SandboxBuilder().buildFromSnapshot(persisted)).restoreLoadedSandbox();
      open.push(restored);
      expect(restored.backend).toBe(h.backend);
      expect(await restored.callHandler('counter', {})).toEqual({ count: 2 });
      const fresh = await (await restored.unload()).getLoadedSandbox();
      await expect(fresh.callHandler('counter', {})).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    }
    // One loaded file serves many clones.
    const once = await Snapshot.loadUnverified(dir, 'application-ready');
    for (let i = 0; i < 3; i++) {
      const s = await (await new SandboxBuilder().buildFromSnapshot(once)).restoreLoadedSandbox();
      open.push(s);
      expect(await s.callHandler('counter', {})).toEqual({ count: 2 });
    }
  });

  it('keeps every tag when saves to one directory run at once', async () => {
    const dir = await snapshotDir();
    const loaded = await loadedCounter();
    const snaps = [];
    for (let i = 1; i <= 6; i++) {
      expect(await loaded.callHandler('counter', {})).toEqual({ count: i });
      snaps.push(await loaded.snapshot());
    }
    const digests = await Promise.all(snaps.map((snap, i) => snap.save(dir, `tag-${i + 1}`)));
    const index = await readJson(join(dir, 'index.json'));
    expect(index.manifests.map((m: Json) => m.annotations['org.opencontainers.image.ref.name']).sort()).toEqual(['tag-1', 'tag-2', 'tag-3', 'tag-4', 'tag-5', 'tag-6']);
    for (let i = 0; i < 6; i++) {
      const persisted = await Snapshot.load(dir, `tag-${i + 1}`);
      expect(index.manifests.find((m: Json) => m.digest === digests[i])).toBeDefined();
      const restored = await (await new SandboxBuilder().buildFromSnapshot(persisted)).restoreLoadedSandbox();
      open.push(restored);
      expect(await restored.callHandler('counter', {})).toEqual({ count: i + 2 });
    }
    expect(await readdir(dir)).not.toContain('index.json.lock');
  });

  it('rewrites a blob that is present with the same size but other bytes, or as a link', async () => {
    const dir = await snapshotDir();
    const snapshot = await (await loadedCounter()).snapshot();
    await snapshot.save(dir, 'first');
    const index = await readJson(join(dir, 'index.json'));
    const [cpu, memory] = (await readJson(blobPath(dir, index.manifests[0].digest))).layers as Json[];
    const altered = await readFile(blobPath(dir, memory.digest));
    altered[altered.length >> 1] ^= 0xff;
    await writeFile(blobPath(dir, memory.digest), altered);
    const elsewhere = join(dir, '..', 'cpu-copy');
    await writeFile(elsewhere, await readFile(blobPath(dir, cpu.digest)));
    await rm(blobPath(dir, cpu.digest));
    await symlink(elsewhere, blobPath(dir, cpu.digest));

    await snapshot.save(dir, 'again');
    expect((await lstat(blobPath(dir, cpu.digest))).isFile()).toBe(true);
    expect((await Snapshot.load(dir, 'again')).kind).toBe('loadedJsSandbox');
  });

  it('saves a jsSandbox with its staged sources and its host function requirements', async () => {
    const dir = await snapshotDir();
    const modules = () => [new HostFunctionModule('state').register('next', () => 7)];
    const js = await (await h.builder().setHostFunctionModules(modules).build()).loadRuntime();
    open.push(js);
    js.addModule('util', 'export const twice = (x) => 2 * x;');
    js.addHandler('h', 'import * as state from "host:state"; import { twice } from "user:util"; function handler() { return twice(state.next()); }');
    await (await js.snapshot()).save(dir, 'staged');
    // A second tag in the same layout; saving a tag again replaces it.
    await (await js.snapshot()).save(dir, 'other');
    await (await js.snapshot()).save(dir, 'other');
    expect((await readJson(join(dir, 'index.json'))).manifests).toHaveLength(2);


    // A forged file cannot stage a module in a reserved namespace.
    await (await js.snapshot()).save(dir, 'forged');
    await forgeMetadata(dir, 'forged', (meta) => {
      meta.staged.modules[0].namespace = 'host';
    });
    const forged = await (await new SandboxBuilder().setHostFunctionModules(modules).buildFromSnapshot(await Snapshot.load(dir, 'forged'))).restoreJsSandbox().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(forged).toMatchObject({ code: 'ERR_INVALID_ARG' });

    const persisted = await Snapshot.load(dir, 'staged');
    expect(persisted.kind).toBe('jsSandbox');
    expect(persisted.requirements).toEqual({ hostFunctions: [{ module: 'host:state', functions: ['next'] }], moduleLoader: 'unknown' });
    await expect((await new SandboxBuilder().buildFromSnapshot(persisted)).restoreJsSandbox()).rejects.toThrow(/requires host module 'host:state'/);
    const restored = await (await new SandboxBuilder().setHostFunctionModules(modules).buildFromSnapshot(persisted)).restoreJsSandbox();
    open.push(restored);
    const loaded = await restored.getLoadedSandbox();
    expect(await loaded.callHandler('h', {})).toBe(14);
  });

  it('refuses altered, oversized, malformed and foreign snapshot files', async () => {
    const dir = await snapshotDir();
    const loaded = await loadedCounter();
    const snapshot = await loaded.snapshot();
    // Equal content: every tag names one manifest until forged.
    for (const tag of ['pristine', 'memory', 'size', 'heap', 'schema', 'abi', 'image', 'layers', 'ranges', 'backend']) await snapshot.save(dir, tag);

    const expectRefused = async (tag: string, pattern: RegExp) => {
      const err = await Snapshot.load(dir, tag).then(() => undefined, (e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_INVALID_ARG' });
      expect((err as Error).message).toMatch(pattern);
    };
    await expectRefused('no-such-tag', /holds no snapshot/);

    // An altered memory blob (a copy, so the other tags keep theirs).
    await forgeMetadata(dir, 'memory', (_meta, manifest) => {
      manifest.layers[1].digest = `sha256:${'0'.repeat(64)}`;
    });
    const index = await readJson(join(dir, 'index.json'));
    const manifest = await readJson(blobPath(dir, index.manifests.find((m: Json) => m.annotations['org.opencontainers.image.ref.name'] === 'memory').digest));
    const original = await readFile(blobPath(dir, (await readJson(blobPath(dir, index.manifests[0].digest))).layers[1].digest));
    original[original.length >> 1] ^= 0xff;
    await writeFile(blobPath(dir, manifest.layers[1].digest), original);
    manifest.layers[1].size = original.length;
    await forgeMetadata(dir, 'memory', (_meta, m) => Object.assign(m.layers[1], manifest.layers[1]));
    await expectRefused('memory', /does not match its digest/);

    await forgeMetadata(dir, 'size', (_meta, m) => {
      m.layers[1].size = 2 ** 50;
    });
    await expectRefused('size', /more than the .* allowed/);
    // A forged heap size would raise the memory layer's read limit past any real guest.
    await forgeMetadata(dir, 'heap', (meta) => {
      meta.config.heapSize = 2 ** 40;
    });
    await expectRefused('heap', /config\.heapSize/);
    await forgeMetadata(dir, 'schema', (meta) => {
      meta.airlockSnapshot = 99;
    });
    await expectRefused('schema', /airlockSnapshot/);
    await forgeMetadata(dir, 'abi', (meta) => {
      meta.abiVersion += 1;
    });
    await expectRefused('abi', /abiVersion/);
    await forgeMetadata(dir, 'image', (meta) => {
      meta.imageSha256 = 'ab'.repeat(32);
    });
    await expectRefused('image', /imageSha256/);
    await forgeMetadata(dir, 'layers', (meta) => {
      meta.state.memoryLayer = meta.state.cpuStateLayer;
    });
    await expectRefused('layers', /memory layer is missing/);
    await forgeMetadata(dir, 'ranges', (meta) => {
      meta.state.ranges[0].length += 1;
    });
    await expectRefused('ranges', /ranges cover/);
    await forgeMetadata(dir, 'backend', (meta) => {
      meta.backend = h.backend === 'kvm' ? 'wasm' : 'kvm';
    });
    const err = await Snapshot.load(dir, 'backend').then(() => undefined, (e: unknown) => e);
    expect(['ERR_INVALID_ARG', 'ERR_UNAVAILABLE']).toContain((err as { code?: string }).code);

    // The blobs the forgeries left alone still load.
    expect((await Snapshot.load(dir, 'pristine')).kind).toBe('loadedJsSandbox');
  });
});
