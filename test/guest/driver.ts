// driver.ts — drives out/guest/native/airlock-native over its framed stdin/stdout
// protocol for the guest runtime tests: encodes requests, decodes outputs (abi.h),
// and answers HOST_CALL exits through a callback.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  AIRLOCK_EXIT_ABORT,
  AIRLOCK_EXIT_HOST_CALL,
  AIRLOCK_EXIT_RESPONSE,
  AIRLOCK_MSG_CALL,
  AIRLOCK_MSG_HOST_CALL,
  AIRLOCK_MSG_HOST_RETURN,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_LOAD_RUNTIME,
  AIRLOCK_STATUS_HOST_ERROR,
  AIRLOCK_STATUS_OK,
} from '../../src/engine/abi.generated';
import { decodeOutput, encodeMessage, fieldText, type GuestOutput, type FieldValue } from '../../src/engine/protocol';

export const nativeBinary = join(__dirname, '..', '..', 'out', 'guest', 'native', 'airlock-native');

export interface NativeOptions {
  heapSize?: number;
  inputSize?: number;
  outputSize?: number;
  consoleLimit?: number;
}

export interface Exchange extends GuestOutput {
  exitKind: number;
  /** Console entries of every HOST_CALL exit during the request, then the final one's. */
  allConsole: GuestOutput['console'];
  hostCalls: { module: string; fn: string; args: unknown[] }[];
}

/** What a host function does: return a JSON-able value, or throw to send HOST_ERROR. */
export type HostFunctions = Record<string, (...args: unknown[]) => unknown>;

export class NativeGuest {
  private readonly child: ChildProcessWithoutNullStreams;
  private buffered = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private closed = false;
  stderr = '';
  hostFunctions: HostFunctions = {};

  constructor(options: NativeOptions = {}) {
    if (!existsSync(nativeBinary)) throw new Error(`${nativeBinary} is missing: run make -C guest`);
    const args: string[] = [];
    if (options.heapSize) args.push('--heap-size', String(options.heapSize));
    if (options.inputSize) args.push('--input-size', String(options.inputSize));
    if (options.outputSize) args.push('--output-size', String(options.outputSize));
    if (options.consoleLimit) args.push('--console-limit', String(options.consoleLimit));
    this.child = spawn(nativeBinary, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.on('data', (d: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, d]);
      this.wake();
    });
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.child.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async readBytes(n: number): Promise<Buffer> {
    while (this.buffered.length < n) {
      if (this.closed) throw new Error(`airlock-native exited early (stderr: ${this.stderr})`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buffered.subarray(0, n);
    this.buffered = this.buffered.subarray(n);
    return out;
  }

  /** Reads one `exit kind + length + bytes` frame. */
  async readFrame(): Promise<{ exitKind: number; output: Buffer }> {
    const head = await this.readBytes(8);
    const exitKind = head.readUInt32LE(0);
    const output = Buffer.from(await this.readBytes(head.readUInt32LE(4)));
    return { exitKind, output };
  }

  writeFrame(message: Uint8Array): void {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(message.byteLength, 0);
    this.child.stdin.write(Buffer.concat([len, message]));
  }

  /** The boot output (READY or ABORT). */
  async boot(): Promise<Exchange> {
    const { exitKind, output } = await this.readFrame();
    const decoded = decodeOutput(output);
    return { ...decoded, exitKind, allConsole: decoded.console, hostCalls: [] };
  }

  /** Sends raw request bytes and runs the exchange to its final response. */
  async sendRaw(request: Uint8Array): Promise<Exchange> {
    this.writeFrame(request);
    const allConsole: GuestOutput['console'] = [];
    const hostCalls: Exchange['hostCalls'] = [];
    for (;;) {
      const { exitKind, output } = await this.readFrame();
      const decoded = decodeOutput(output);
      allConsole.push(...decoded.console);
      if (exitKind === AIRLOCK_EXIT_HOST_CALL) {
        if (decoded.final.kind !== AIRLOCK_MSG_HOST_CALL) throw new Error('HOST_CALL exit without a HOST_CALL message');
        const module = fieldText(decoded.final, 0) ?? '';
        const fn = fieldText(decoded.final, 1) ?? '';
        const args = JSON.parse(fieldText(decoded.final, 2) ?? '[]') as unknown[];
        hostCalls.push({ module, fn, args });
        this.writeFrame(this.answerHostCall(module, fn, args));
        continue;
      }
      if (exitKind !== AIRLOCK_EXIT_RESPONSE && exitKind !== AIRLOCK_EXIT_ABORT) {
        throw new Error(`unexpected exit kind ${exitKind}`);
      }
      return { ...decoded, exitKind, allConsole, hostCalls };
    }
  }

  private answerHostCall(module: string, fn: string, args: unknown[]): Buffer {
    const impl = this.hostFunctions[`${module}.${fn}`];
    try {
      if (!impl) throw new Error(`no host function ${module}.${fn}`);
      const value = impl(...args);
      const fields: FieldValue[] = value === undefined ? [] : [JSON.stringify(value)];
      return encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_OK, fields);
    } catch (e) {
      return encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_HOST_ERROR, [(e as Error).message]);
    }
  }

  send(kind: number, status: number, fields: FieldValue[]): Promise<Exchange> {
    return this.sendRaw(encodeMessage(kind, status, fields));
  }

  loadRuntime(functions: string[][] = []): Promise<Exchange> {
    return this.send(AIRLOCK_MSG_LOAD_RUNTIME, 0, functions.flat());
  }

  /** Loads handlers ({name: source}) and modules ([namespace, name, source]). */
  load(handlers: Record<string, string>, modules: [string, string, string][] = []): Promise<Exchange> {
    const fields: string[] = [];
    for (const [ns, name, src] of modules) fields.push('module', ns, name, src);
    for (const [name, src] of Object.entries(handlers)) fields.push('handler', '', name, src);
    return this.send(AIRLOCK_MSG_LOAD, 0, fields);
  }

  call(name: string, event?: unknown, flags = 0): Promise<Exchange> {
    const fields: string[] = [name];
    if (event !== undefined) fields.push(JSON.stringify(event));
    return this.send(AIRLOCK_MSG_CALL, flags, fields);
  }

  interrupt(): void {
    this.child.kill('SIGUSR1');
  }

  /** Makes the running request abort at its next interrupt check (the native target's
   *  test-only SIGUSR2), as a guest fault or abort() would end it. */
  abortRunning(): void {
    this.child.kill('SIGUSR2');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.child.stdin.end();
    await new Promise<void>((r) => {
      if (this.closed) r();
      else this.child.on('close', () => r());
    });
  }
}

/** The text fields of a final message. */
export function texts(x: Exchange): string[] {
  return x.final.fields.map((f) => f.toString('utf8'));
}
