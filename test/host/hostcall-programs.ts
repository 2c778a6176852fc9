// hostcall-programs.ts — hand-assembled guests for host calls handed over through
// memory (abi.h, "Polling": HOST_CALL, HOST_CALL_TAKEN, HOST_CALL_EXIT): one that
// follows the steps without a single exit, one that gives up waiting, and ones that
// forge each new state. Encoders from hostile-programs.ts and hostile-generator.ts,
// jumps resolved by a two-pass label assembler (rel32, so any distance fits).
import * as abi from '../../src/engine/abi.generated.js';
import { casPoll, echoRequest } from './hostile-generator.js';
import { bootAsPoller, bootPlain, exitWith, movDword, spinForever } from './hostile-programs.js';
import { CONTROL } from './raw-guest.js';

const cat = (...parts: Buffer[]) => Buffer.concat(parts);
const POLL = CONTROL + abi.AIRLOCK_CTRL_OFF_POLL_STATE;
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};

type Item = Buffer | { label: string } | { jump: 'jmp' | 'je' | 'jne' | 'jb'; to: string };
const JCC = { je: 0x84, jne: 0x85, jb: 0x82 } as const;

/** Lays out `items`; a jump is E9 rel32 or 0F 8x rel32, relative to its own end. */
export function assemble(items: Item[]): Buffer {
  const size = (it: Item) => (Buffer.isBuffer(it) ? it.length : 'label' in it ? 0 : it.jump === 'jmp' ? 5 : 6);
  const labels = new Map<string, number>();
  let at = 0;
  for (const it of items) {
    if (!Buffer.isBuffer(it) && 'label' in it) labels.set(it.label, at);
    at += size(it);
  }
  const out: Buffer[] = [];
  at = 0;
  for (const it of items) {
    at += size(it);
    if (Buffer.isBuffer(it)) out.push(it);
    else if ('jump' in it) {
      const target = labels.get(it.to);
      if (target === undefined) throw new Error(`no label ${it.to}`);
      const rel = Buffer.alloc(4);
      rel.writeInt32LE(target - at);
      out.push(it.jump === 'jmp' ? cat(Buffer.from([0xe9]), rel) : cat(Buffer.from([0x0f, JCC[it.jump]]), rel));
    }
  }
  return cat(...out);
}

/** pause; cmp dword [C+poll_state], state — F3 90; 83 3C 25 disp32 imm8 */
export const pauseCmpPoll = (state: number) => cat(Buffer.from('f390833c25', 'hex'), u32(POLL), Buffer.from([state]));
const setPoll = (state: number) => movDword(POLL, state);
const noOutput = () => movDword(CONTROL + abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN, 0);
const exitResponse = () => exitWith(abi.AIRLOCK_EXIT_RESPONSE);

/** Polls; each request the host enters with (REQUEST_EXIT, the watcher not watching) is
 *  answered at once with no output; a request handed over in memory (REQUEST) moves to
 *  HOST_CALL with an output of `responseLen` bytes (with `call`) and runs `scenario`
 *  (which may jump back to "top"). */
export function watchedHostCall(scenario: Item[], call = true, responseLen = 0): Buffer {
  return assemble([
    bootAsPoller(),
    { label: 'top' },
    pauseCmpPoll(abi.AIRLOCK_POLL_REQUEST),
    { jump: 'jb', to: 'top' },
    { jump: 'jne', to: 'by-exit' },
    ...(call
      ? [
          movDword(CONTROL + abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN, responseLen),
          casPoll(abi.AIRLOCK_POLL_REQUEST, abi.AIRLOCK_POLL_HOST_CALL),
          { jump: 'jne', to: 'by-exit' } as Item, // the watcher stopped watching first
        ]
      : []),
    ...scenario,
    { label: 'by-exit' },
    noOutput(),
    exitResponse(),
    { jump: 'jmp', to: 'top' },
  ]);
}

/** Waits until poll_state == state. */
const waitFor = (label: string, state: number): Item[] => [{ label }, pauseCmpPoll(state), { jump: 'jne', to: label }];

/** Waits in memory until the host releases the guest (REQUEST, or REQUEST_EXIT without a
 *  watcher), then answers with the input buffer's bytes: in memory (REQUEST -> READY) if
 *  still watched, else by an exit; then back to "top". */
const awaitReplyThenAnswer = (): Item[] => [
  { label: 'wait' },
  pauseCmpPoll(abi.AIRLOCK_POLL_REQUEST),
  { jump: 'je', to: 'answer' },
  pauseCmpPoll(abi.AIRLOCK_POLL_REQUEST_EXIT),
  { jump: 'jne', to: 'wait' },
  { label: 'answer' },
  echoRequest(),
  casPoll(abi.AIRLOCK_POLL_REQUEST, abi.AIRLOCK_POLL_READY),
  { jump: 'je', to: 'top' },
  exitResponse(),
  { jump: 'jmp', to: 'top' },
];

/** A poller ("top") that, for each request however it came, makes a host call with an
 *  exit and no output. */
const hostCallByExitOnRequest = (): Item[] => [
  bootAsPoller(),
  { label: 'top' },
  pauseCmpPoll(abi.AIRLOCK_POLL_REQUEST),
  { jump: 'jb', to: 'top' }, // IDLE or READY: no request yet
  noOutput(),
  exitWith(abi.AIRLOCK_EXIT_HOST_CALL),
];

export const hostcall = {
  /** Makes its host call in memory, waits there (never exits) until the host writes the
   *  reply and releases it (REQUEST, or REQUEST_EXIT without a watcher), then answers
   *  with the HOST_RETURN bytes: in memory (REQUEST -> READY) if still watched, else by
   *  an exit. A request answered with no output went by exit all along. */
  inMemory: () =>
    watchedHostCall(awaitReplyThenAnswer()),
  /** Once the host took the call, stops waiting (HOST_CALL_TAKEN -> HOST_CALL_EXIT),
   *  exits, and answers with the reply it is entered with, by an exit. */
  givesUpAfterTake: () =>
    watchedHostCall([
      ...waitFor('wait', abi.AIRLOCK_POLL_HOST_CALL_TAKEN),
      casPoll(abi.AIRLOCK_POLL_HOST_CALL_TAKEN, abi.AIRLOCK_POLL_HOST_CALL_EXIT),
      exitWith(abi.AIRLOCK_EXIT_HOST_CALL),
      echoRequest(),
      exitResponse(),
      { jump: 'jmp', to: 'top' },
    ]),
  /** Makes a host call in memory and then spins, whatever the host does. */
  callsAndSpins: () => watchedHostCall([spinForever()]),
  /** After the host took the call, writes `state` into poll_state and exits IDLE. */
  forgesWhileTaken: (state: number) =>
    watchedHostCall([
      ...waitFor('wait', abi.AIRLOCK_POLL_HOST_CALL_TAKEN),
      setPoll(state),
      exitWith(abi.AIRLOCK_EXIT_IDLE),
      spinForever(),
    ]),
  /** After the host took the call, goes on without its reply: `then` is 'answer' (an
   *  answer by exit), 'call' (another host call by exit) or 'park' (an IDLE exit). */
  goesOnWhileTaken: (then: 'answer' | 'call' | 'park') =>
    watchedHostCall([
      ...waitFor('wait', abi.AIRLOCK_POLL_HOST_CALL_TAKEN),
      setPoll(then === 'park' ? abi.AIRLOCK_POLL_IDLE : abi.AIRLOCK_POLL_REQUEST_EXIT),
      exitWith(then === 'answer' ? abi.AIRLOCK_EXIT_RESPONSE : then === 'call' ? abi.AIRLOCK_EXIT_HOST_CALL : abi.AIRLOCK_EXIT_IDLE),
      spinForever(),
    ]),
  /** A poller (flag set) that makes each request's host call with an exit (empty
   *  output), whichever way the request came, and answers by an exit with the
   *  HOST_RETURN it is entered again with: the host may write that reply into memory
   *  from the main thread. */
  exitCallEchoesReply: () =>
    assemble([
      ...hostCallByExitOnRequest(),
      echoRequest(),
      exitResponse(),
      { jump: 'jmp', to: 'top' },
    ]),
  /** A poller (flag set) whose request, entered by an exit, makes one host call with an
   *  exit; if the host hands the rest of the request back to the watcher (REQUEST after
   *  that reply), makes a second call in memory and waits there, never giving up, until
   *  the host takes it and writes the reply. Answers with the last reply it got, in
   *  memory if still watched, else by an exit. */
  exitCallThenMemoryCall: () =>
    assemble([
      ...hostCallByExitOnRequest(),
      noOutput(),
      casPoll(abi.AIRLOCK_POLL_REQUEST, abi.AIRLOCK_POLL_HOST_CALL),
      { jump: 'jne', to: 'answer' }, // REQUEST_EXIT: the rest of the request goes by exits
      ...awaitReplyThenAnswer(),
    ]),
  /** A request handed over in memory, then `state` written over REQUEST while the host
   *  watches, as if a call had been taken; then spins. */
  forgesWhileWatched: (state: number) => watchedHostCall([setPoll(state), spinForever()], false),
  /** A request entered by an exit, then `state` written and the HOST_CALL exit taken. */
  exitsWithState: (state: number) => cat(bootPlain(), noOutput(), setPoll(state), exitWith(abi.AIRLOCK_EXIT_HOST_CALL), spinForever()),
  /** Polls, writes `state` with no request in flight and exits IDLE in a loop. */
  stateWithoutRequest: (state: number) =>
    cat(bootAsPoller(), setPoll(state), exitWith(abi.AIRLOCK_EXIT_IDLE), Buffer.from([0xeb, 0xf8])),
};
