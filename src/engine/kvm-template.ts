// kvm-template.ts — the KVM tier's templates (issue #12): a frozen guest in a sealed
// memfd that clones map copy-on-write, and its export to / import from plain data.
// The addon does the work (host/src/template*.cc); this file adapts it to
// TemplateSupport and checks what only JavaScript knows (the image digest).
import { createHash } from 'node:crypto';
import { AirlockError, InternalError, InvalidArgumentError } from '../errors.js';
import type { EngineConfig, EngineTemplate, GuestEngine, HostCallHandler, SerializedTemplate, TemplateSupport } from './engine.js';
import { KvmEngine, kvmGuestImage } from './kvm-engine.js';
import { loadAddon, type NativeAddon } from './native.js';

/** The addon's template functions (host/src/template_napi.cc). */
export interface NativeTemplateApi {
  makeTemplate(snapshot: object): object;
  exportTemplate(template: object): { cpuState: Buffer; memory: Array<{ offset: number; bytes: Buffer }> };
  importTemplate(
    image: Buffer,
    config: EngineConfig,
    cpuState: Uint8Array,
    memory: ReadonlyArray<{ offset: number; bytes: Uint8Array }>,
  ): object;
  releaseTemplate(template: object): void;
  templateByteLength(template: object): number;
}

export function nativeTemplateApi(): NativeAddon & NativeTemplateApi {
  return loadAddon().addon as NativeAddon & NativeTemplateApi;
}

function coded(e: unknown): AirlockError {
  if (e instanceof AirlockError) return e;
  const err = e as { code?: string; message?: string };
  const message = err?.message ?? String(e);
  return err?.code === 'ERR_INVALID_ARG' ? new InvalidArgumentError(message) : new InternalError(message, { cause: e });
}

let imageDigest: string | undefined;

export function guestImageSha256(): string {
  imageDigest ??= createHash('sha256').update(kvmGuestImage()).digest('hex');
  return imageDigest;
}

export class KvmTemplate implements EngineTemplate {
  readonly backend = 'kvm' as const;
  private handle: object | undefined;

  constructor(
    handle: object,
    readonly config: EngineConfig,
    /** Bytes of guest memory the image holds (all-zero pages are holes, not counted). */
    readonly byteLength: number,
  ) {
    this.handle = handle;
  }

  /** The addon's handle; ERR_INVALID_ARG once released. */
  native(): object {
    if (!this.handle) throw new InvalidArgumentError('the template has been released');
    return this.handle;
  }

  release(): void {
    if (!this.handle) return;
    nativeTemplateApi().releaseTemplate(this.handle);
    this.handle = undefined;
  }
}

/** A template of `snapshot`'s native state, taken by a sandbox made with `config`. */
export function makeKvmTemplate(nativeSnapshot: object, config: EngineConfig): KvmTemplate {
  const api = nativeTemplateApi();
  try {
    const handle = api.makeTemplate(nativeSnapshot);
    return new KvmTemplate(handle, { ...config }, api.templateByteLength(handle));
  } catch (e) {
    throw coded(e);
  }
}

function clone(template: EngineTemplate, onHostCall: HostCallHandler, _options?: { deterministic?: boolean }): GuestEngine {
  // Every request carries fresh host entropy, so a clone reseeds on its first request
  // whatever `deterministic` says; nothing to do for it here.
  if (!(template instanceof KvmTemplate)) throw new InvalidArgumentError('the template was not made by the KVM tier');
  return KvmEngine.fromTemplate(template.native(), template.config, onHostCall);
}

function exportTemplate(template: EngineTemplate): SerializedTemplate {
  if (!(template instanceof KvmTemplate)) throw new InvalidArgumentError('the template was not made by the KVM tier');
  const api = nativeTemplateApi();
  let raw: ReturnType<NativeTemplateApi['exportTemplate']>;
  try {
    raw = api.exportTemplate(template.native());
  } catch (e) {
    throw coded(e);
  }
  return {
    backend: 'kvm',
    abiVersion: api.abiVersion,
    imageSha256: guestImageSha256(),
    config: { ...template.config },
    cpuState: new Uint8Array(raw.cpuState.buffer, raw.cpuState.byteOffset, raw.cpuState.byteLength),
    memory: raw.memory.map((r) => ({ offset: r.offset, bytes: new Uint8Array(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength) })),
  };
}

const configKeys = ['heapSize', 'stackSize', 'inputSize', 'outputSize', 'consoleLimit'] as const;

function importTemplate(serialized: SerializedTemplate): EngineTemplate {
  const s = serialized as Partial<SerializedTemplate> | null;
  if (s === null || typeof s !== 'object') throw new InvalidArgumentError('a serialized template must be an object');
  if (s.backend !== 'kvm') throw new InvalidArgumentError(`template backend ${String(s.backend)} is not kvm`);
  const api = nativeTemplateApi();
  if (s.abiVersion !== api.abiVersion)
    throw new InvalidArgumentError(`template abiVersion ${String(s.abiVersion)} does not match this host's ${api.abiVersion}`);
  if (s.imageSha256 !== guestImageSha256())
    throw new InvalidArgumentError('template imageSha256 does not match the guest image this host runs');
  if (s.config === null || typeof s.config !== 'object') throw new InvalidArgumentError('template config must be an object');
  const config = {} as EngineConfig;
  for (const key of configKeys) {
    const v = (s.config as unknown as Record<string, unknown>)[key];
    if (typeof v !== 'number') throw new InvalidArgumentError(`template config.${key} must be a number`);
    config[key] = v;
  }
  if (!(s.cpuState instanceof Uint8Array)) throw new InvalidArgumentError('template cpuState must be a Uint8Array');
  if (!Array.isArray(s.memory)) throw new InvalidArgumentError('template memory must be an array');
  try {
    const handle = api.importTemplate(kvmGuestImage(), config, s.cpuState, s.memory);
    return new KvmTemplate(handle, config, api.templateByteLength(handle));
  } catch (e) {
    throw coded(e);
  }
}

export const kvmTemplateSupport: TemplateSupport = { clone, exportTemplate, importTemplate };
