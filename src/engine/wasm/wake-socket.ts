// wake-socket.ts — how the main thread wakes for a WebAssembly answer: one connected
// pair of Unix sockets per process. A worker that answers while the main thread waits
// for it (a call's turn or an operation) writes one byte to the write end (its fd is in
// the control words, Slot.WakeFd, armed by the waiter); the read end's I/O callback, a
// task of the event loop like any socket's, settles every waiter whose State word changed. Bytes are only hints: a waiter is settled by the State word
// it reads, never by a byte, so a stale, merged or missing-peer byte changes nothing.
//
// Why not Atomics.waitAsync: V8 resolves it with a task it posts while holding its
// process-wide Atomics wait-list lock, which the woken main thread needs at once, so
// every answer cost the main thread two context switches (one asleep in epoll, one on
// that lock); a socket wake costs one (docs/ARCHITECTURE.md, "The main thread's share").
// Where the pair cannot be made (no Unix sockets, no fd to write), wakeFd() stays 0 and
// the engine waits with Atomics.waitAsync as before.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** An exchange waiting for its worker's answer (WasmEngine). */
export interface WakeWaiter {
  /** Whether the worker answered (State moved on) or went away. */
  answered(): boolean;
  /** Called once, from the read callback or checkWakeWaiters(), when answered() is true. */
  wake(): void;
  /** Called instead of wake() when the pair broke before the answer: wait another way. */
  lost(): void;
  /** Waits for an operation (boot, snapshot, restore, reset), not a call's answer:
   *  counted apart, so a count of calls' wakes says which path the calls took. */
  readonly op?: boolean;
}

const waiters = new Set<WakeWaiter>();
/** The write end's fd plus 1 (0: no wake socket), as Slot.WakeFd carries it. */
let writeFdPlusOne = 0;
let starting: Promise<boolean> | undefined;
/** Waiters settled so far, calls' and operations' apart (tests count them to know
 *  which path a call or an operation took). */
let wakes = 0;
let opWakes = 0;
/** Waits that needed no wake-up: the worker answered before the main thread armed the
 *  socket (GuestWorker.armWake), so it wrote no byte either. */
let skips = 0;
let opSkips = 0;
/** Held so neither end is collected and closed while workers write to it. */
let ends: { reader: Socket; writer: Socket } | undefined;

/** What a request puts in Slot.WakeFd: the write end's fd + 1, or 0 (wait another way). */
export function wakeFd(): number {
  return writeFdPlusOne;
}

/** Makes the pair once per process, in the background; calls before it is ready (or
 *  after it failed) wait with Atomics.waitAsync. Resolves with whether it is in use. */
export function startWakeSocket(): Promise<boolean> {
  starting ??= makePair().then(
    () => writeFdPlusOne !== 0,
    () => false,
  );
  return starting;
}

/** How many waits of calls (`op`: of operations) the wake socket, or a worker's exit,
 *  has settled. */
export function wakeSocketWakes(op = false): number {
  return op ? opWakes : wakes;
}

/** How many calls' (or operations') waits found the answer there as they armed the socket. */
export function wakeSocketSkips(op = false): number {
  return op ? opSkips : skips;
}

/** Counts a wait that found its answer as it armed the socket. */
export function noteWakeSkipped(op: boolean): void {
  if (op) opSkips++;
  else skips++;
}

export function addWakeWaiter(w: WakeWaiter): void {
  waiters.add(w);
}

/** The reader's `onread` callback: the bytes are only hints (see the top). */
function onWakeBytes(): boolean {
  checkWakeWaiters();
  return true;
}

/** Settles every waiter whose worker answered or went away: on each byte, and when a
 *  worker exits (pool.ts), which writes none. */
export function checkWakeWaiters(): void {
  for (const w of waiters) {
    if (!w.answered()) continue;
    waiters.delete(w);
    if (w.op) opWakes++;
    else wakes++;
    w.wake();
  }
}

async function makePair(): Promise<void> {
  // A private directory (mode 0700): only this user can reach the listening socket,
  // and only until the one connection is accepted.
  const dir = mkdtempSync(join(tmpdir(), 'airlock-wake-'));
  try {
    const path = join(dir, 's');
    const server = createServer({ allowHalfOpen: true });
    try {
      const accepted = new Promise<Socket>((resolve, reject) => {
        server.once('connection', resolve);
        server.once('error', reject);
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, resolve);
      });
      server.unref();
      // The reader is the connecting end, made with `onread`: each read lands in one
      // small buffer kept for the process and goes straight to the callback, with no
      // Buffer allocated and no stream machinery per wake (a few µs of the main
      // thread's CPU per call). The accepted end is the one workers write to.
      const reader = connect({ path, onread: { buffer: Buffer.alloc(64), callback: onWakeBytes } });
      reader.unref();
      await new Promise<void>((resolve, reject) => {
        reader.once('connect', resolve);
        reader.once('error', reject);
      });
      const writer = await accepted;
      // Internal but long-standing: a connected net.Socket's handle exposes its fd (-1
      // where the platform has none to share, e.g. Windows pipes).
      const fd = (writer as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
      if (typeof fd !== 'number' || fd < 0) {
        writer.destroy();
        reader.destroy();
        return;
      }
      writer.unref();
      reader.on('error', broken);
      reader.on('close', broken);
      // The write end only ever carries the workers' bytes; it reads nothing, so its own
      // errors cannot close the fd they write to while a request names it.
      writer.pause();
      writer.on('error', broken);
      ends = { reader, writer };
      writeFdPlusOne = fd + 1;
    } finally {
      server.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Stops using the pair as its failure would (a test's way to reach that path). */
export function abandonWakeSocket(): void {
  broken();
}

/** The pair failed: no new request names it, and the waiters wait another way. Both
 *  ends stay open (held in `ends`): a worker may still write to the fd a request named,
 *  and a closed fd's number could be reused for an unrelated file. */
function broken(): void {
  if (writeFdPlusOne === 0) return;
  writeFdPlusOne = 0;
  for (const w of [...waiters]) {
    waiters.delete(w);
    if (w.answered()) w.wake();
    else w.lost();
  }
}
