// protocol.ts — encodes requests and decodes guest output in the framing of
// guest/include/abi.h. Shared by both tiers. Guest output is hostile: every length is
// checked before use and any violation becomes a GuestAbortError (the sandbox is then
// poisoned by the caller), never an exception escaping as something else.
import { randomFillSync } from 'node:crypto';
import { GuestAbortError } from '../errors.js';
import {
  AIRLOCK_ENTROPY_SIZE,
  AIRLOCK_RUNTIME_OPT_BINARY,
  AIRLOCK_RUNTIME_OPT_FIXED_RANDOM,
  AIRLOCK_RUNTIME_OPT_FIXED_TIME,
  AIRLOCK_RUNTIME_OPT_HARDENED,
  AIRLOCK_RUNTIME_OPTIONS_SIZE,
  AIRLOCK_FIELD_HEADER_SIZE,
  AIRLOCK_MSG_ABORT,
  AIRLOCK_MSG_CONSOLE,
  AIRLOCK_MSG_HEADER_SIZE,
  AIRLOCK_MSG_HOST_CALL,
} from './abi.generated.js';

/** A field to encode: text (UTF-8) or raw bytes. `undefined` fields must come last and are omitted. */
export type FieldValue = string | Uint8Array;

export interface Message {
  kind: number;
  status: number;
  fields: Buffer[];
}

export type ConsoleLevel = 'log' | 'info' | 'warn' | 'error' | 'debug';

export interface ConsoleEntry {
  level: ConsoleLevel;
  text: string;
}

export interface GuestOutput {
  console: ConsoleEntry[];
  final: Message;
}

/** A console entry whose text is still the guest's bytes (a view into its output). */
export interface RawConsoleEntry {
  level: ConsoleLevel;
  text: Buffer;
}

export interface RawGuestOutput {
  console: RawConsoleEntry[];
  final: Message;
}

const CONSOLE_LEVELS: ReadonlySet<string> = new Set(['log', 'info', 'warn', 'error', 'debug']);

/** Bytes an encoded message with these fields occupies (header included). */
export function encodedSize(fields: readonly FieldValue[]): number {
  let size = AIRLOCK_MSG_HEADER_SIZE;
  for (const f of fields) {
    size += AIRLOCK_FIELD_HEADER_SIZE + (typeof f === 'string' ? Buffer.byteLength(f, 'utf8') : f.byteLength);
  }
  return size;
}

/** Encodes one message: header then `u32le length + bytes` per field. `total`: the
 *  caller's encodedSize(fields), when it had to know it anyway (measuring costs a pass
 *  over every string). */
export function encodeMessage(kind: number, status: number, fields: readonly FieldValue[], total = encodedSize(fields)): Buffer {
  const buf = Buffer.allocUnsafe(total);
  buf.writeUInt32LE(kind, 0);
  buf.writeUInt32LE(status >>> 0, 4);
  buf.writeUInt32LE(total - AIRLOCK_MSG_HEADER_SIZE, 8);
  buf.writeUInt32LE(fields.length, 12);
  let off = AIRLOCK_MSG_HEADER_SIZE;
  for (const f of fields) {
    if (typeof f === 'string') {
      const n = buf.write(f, off + AIRLOCK_FIELD_HEADER_SIZE, 'utf8');
      buf.writeUInt32LE(n, off);
      off += AIRLOCK_FIELD_HEADER_SIZE + n;
    } else {
      buf.writeUInt32LE(f.byteLength, off);
      buf.set(f, off + AIRLOCK_FIELD_HEADER_SIZE);
      off += AIRLOCK_FIELD_HEADER_SIZE + f.byteLength;
    }
  }
  return buf;
}

function malformed(what: string): never {
  throw new GuestAbortError(`malformed guest output: ${what}`);
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Decodes the message at `offset`; returns it and the offset after it. */
export function decodeMessageAt(bytes: Uint8Array, offset: number): { message: Message; next: number } {
  const buf = asBuffer(bytes);
  if (offset + AIRLOCK_MSG_HEADER_SIZE > buf.length) malformed(`truncated message header at byte ${offset}`);
  const kind = buf.readUInt32LE(offset);
  const status = buf.readUInt32LE(offset + 4);
  const length = buf.readUInt32LE(offset + 8);
  const count = buf.readUInt32LE(offset + 12);
  const bodyStart = offset + AIRLOCK_MSG_HEADER_SIZE;
  const end = bodyStart + length;
  if (end > buf.length) malformed(`message body of ${length} bytes overruns the ${buf.length}-byte output`);
  // Each field needs at least its 4-byte length, which bounds `count` before we loop on it.
  if (count > length / AIRLOCK_FIELD_HEADER_SIZE) malformed(`message claims ${count} fields in ${length} bytes`);
  const fields: Buffer[] = [];
  let off = bodyStart;
  for (let i = 0; i < count; i++) {
    if (off + AIRLOCK_FIELD_HEADER_SIZE > end) malformed(`field ${i} header overruns its message`);
    const n = buf.readUInt32LE(off);
    off += AIRLOCK_FIELD_HEADER_SIZE;
    if (n > end - off) malformed(`field ${i} of ${n} bytes overruns its message`);
    fields.push(buf.subarray(off, off + n));
    off += n;
  }
  if (off !== end) malformed(`message has ${end - off} bytes after its last field`);
  return { message: { kind, status, fields }, next: end };
}

/**
 * Splits a guest output buffer into console entries and the one final message, leaving
 * console text as bytes so a caller that drops it never decodes it.
 * ABORT is returned as a final message like any other; the caller decides.
 */
export function splitOutput(bytes: Uint8Array): RawGuestOutput {
  const consoleEntries: RawConsoleEntry[] = [];
  let offset = 0;
  for (;;) {
    if (offset >= bytes.byteLength) malformed('output has no final message');
    const { message, next } = decodeMessageAt(bytes, offset);
    if (message.kind === AIRLOCK_MSG_CONSOLE) {
      if (message.fields.length !== 2) malformed('console message needs 2 fields');
      // The guest writes 0; anything else is a word the protocol gives no meaning.
      if (message.status !== 0) malformed(`console message with status ${message.status}`);
      const level = message.fields[0].toString('utf8');
      if (!CONSOLE_LEVELS.has(level)) malformed(`unknown console level '${level.slice(0, 32)}'`);
      consoleEntries.push({ level: level as ConsoleLevel, text: message.fields[1] });
      offset = next;
      continue;
    }
    if (next !== bytes.byteLength && message.kind !== AIRLOCK_MSG_ABORT) {
      malformed(`${bytes.byteLength - next} bytes follow the final message`);
    }
    return { console: consoleEntries, final: message };
  }
}

/**
 * The console lines a guest had written when its call was stopped or aborted
 * (ERR_CANCELLED, ERR_GUEST_ABORT): the CONSOLE messages at the start of its output, up
 * to the first message that is not one (an ABORT, say) or does not decode, which ends
 * them without an error (the guest may have been stopped anywhere). When that message is a HOST_CALL the lines went out with it and were
 * delivered then: none are returned.
 */
export function consoleBeforeStop(bytes: Uint8Array): RawConsoleEntry[] {
  const entries: RawConsoleEntry[] = [];
  let offset = 0;
  while (offset < bytes.byteLength) {
    let decoded: { message: Message; next: number };
    try {
      decoded = decodeMessageAt(bytes, offset);
    } catch {
      break;
    }
    const { message, next } = decoded;
    if (message.kind === AIRLOCK_MSG_HOST_CALL) return [];
    if (message.kind !== AIRLOCK_MSG_CONSOLE || message.fields.length !== 2 || message.status !== 0) break;
    const level = message.fields[0].toString('utf8');
    if (!CONSOLE_LEVELS.has(level)) break;
    entries.push({ level: level as ConsoleLevel, text: message.fields[1] });
    offset = next;
  }
  return entries;
}

/** splitOutput() with console text decoded as UTF-8 (invalid sequences become U+FFFD). */
export function decodeOutput(bytes: Uint8Array): GuestOutput {
  const { console: raw, final } = splitOutput(bytes);
  return { console: raw.map(({ level, text }) => ({ level, text: text.toString('utf8') })), final };
}

/** The text of field `i`, or undefined when the message has fewer fields. */
export function fieldText(message: Message, i: number): string | undefined {
  return i < message.fields.length ? message.fields[i].toString('utf8') : undefined;
}

/**
 * AIRLOCK_ENTROPY_SIZE fresh bytes from the host's CSPRNG, sent as the last field of every
 * LOAD_RUNTIME, LOAD and CALL (flag AIRLOCK_REQUEST_FLAG_ENTROPY): a restored or cloned
 * guest mixes new entropy in before it runs anything, so it never repeats its random numbers.
 */
export function hostEntropy(): Buffer {
  if (entropyPool.length - entropyOffset < AIRLOCK_ENTROPY_SIZE) {
    // A fresh pool, never a refill in place: earlier slices may still be referenced.
    entropyPool = randomFillSync(Buffer.allocUnsafeSlow(ENTROPY_POOL_SIZE));
    entropyOffset = 0;
  }
  const bytes = entropyPool.subarray(entropyOffset, entropyOffset + AIRLOCK_ENTROPY_SIZE);
  entropyOffset += AIRLOCK_ENTROPY_SIZE; // every byte goes to one request only
  return bytes;
}

// One CSPRNG draw serves 128 requests: a draw costs as much as a small call's whole
// main-thread share (OpenSSL's fork check is a getpid() system call per draw).
const ENTROPY_POOL_SIZE = 128 * AIRLOCK_ENTROPY_SIZE;
let entropyPool = Buffer.alloc(0);
let entropyOffset = 0;

/** What LOAD_RUNTIME's options field carries (docs/PROTOCOL.md). */
export interface GuestRuntimeOptions {
  /** The hardened profile, with its clock settings. */
  hardened?: { timeResolutionUs: number; fixedTimeMs: number | undefined };
  /** Math.random replays the sequence of this seed (crypto stays random). */
  randomSeed?: bigint;
  /** Uint8Arrays and ArrayBuffers cross as binary fields beside the JSON. */
  binary?: boolean;
}

/** The LOAD_RUNTIME options field: u32 flags, u32 time resolution (µs), u64 seed, i64 fixed time (ms), little-endian. */
export function encodeRuntimeOptions(options: GuestRuntimeOptions): Buffer {
  const buf = Buffer.alloc(AIRLOCK_RUNTIME_OPTIONS_SIZE);
  let flags = 0;
  if (options.hardened) {
    flags |= AIRLOCK_RUNTIME_OPT_HARDENED;
    buf.writeUInt32LE(options.hardened.timeResolutionUs, 4);
    if (options.hardened.fixedTimeMs !== undefined) {
      flags |= AIRLOCK_RUNTIME_OPT_FIXED_TIME;
      buf.writeBigInt64LE(BigInt(Math.trunc(options.hardened.fixedTimeMs)), 16);
    }
  }
  if (options.randomSeed !== undefined) {
    flags |= AIRLOCK_RUNTIME_OPT_FIXED_RANDOM;
    buf.writeBigUInt64LE(BigInt.asUintN(64, options.randomSeed), 8);
  }
  if (options.binary) flags |= AIRLOCK_RUNTIME_OPT_BINARY;
  buf.writeUInt32LE(flags, 0);
  return buf;
}
