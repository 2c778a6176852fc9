// hostile-programs.ts — hand-assembled guests that attack the host's hand-over,
// budgets and memory accounting (issue #9), built from a few x86-64 encoders so each
// program reads as its instructions. Addresses come from raw-guest.ts's layout.
import * as abi from '../../src/engine/abi.generated.js';
import { CONTROL } from './raw-guest.js';

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
const cat = (...parts: Buffer[]) => Buffer.concat(parts);
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** mov dword [addr], imm32 (absolute disp32 addressing: C7 04 25). */
export const movDword = (addr: number, imm: number) => cat(hex('c70425'), u32(addr), u32(imm));
/** mov qword [addr], sign-extended imm32 (48 C7 04 25). */
export const movQword = (addr: number, imm: number) => cat(hex('48c70425'), u32(addr), u32(imm));
/** mov dx, AIRLOCK_PORT */
export const movDxPort = () => cat(hex('66ba'), Buffer.from([abi.AIRLOCK_PORT & 0xff, abi.AIRLOCK_PORT >> 8]));
/** mov eax, code; out dx, eax */
export const exitWith = (code: number) => cat(hex('b8'), u32(code), hex('ef'));
/** jmp $ */
export const spinForever = () => hex('ebfe');
/** jmp back over `bytes` bytes of code that precede this jump (rel8). */
export const jumpBack = (bytes: number) => {
  if (bytes + 2 > 128) throw new Error('loop body too long for a rel8 jump');
  return Buffer.from([0xeb, (256 - (bytes + 2)) & 0xff]);
};

const ctrl = (off: number) => CONTROL + off;

/** Sets AIRLOCK_GUEST_FLAG_POLLS, then answers the boot with an empty response: the
 *  host runs the guest on (to poll) after this. */
export const bootAsPoller = () =>
  cat(
    movDxPort(),
    movDword(ctrl(abi.AIRLOCK_CTRL_OFF_GUEST_FLAGS), abi.AIRLOCK_GUEST_FLAG_POLLS),
    movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0),
    exitWith(abi.AIRLOCK_EXIT_RESPONSE),
  );

/** Answers the boot without polling. */
export const bootPlain = () =>
  cat(movDxPort(), movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0), exitWith(abi.AIRLOCK_EXIT_RESPONSE));

const loop = (body: Buffer) => cat(body, jumpBack(body.length));

export const hostile = {
  /** Polls, then writes REQUEST into poll_state with no exchange in flight and exits
   *  IDLE over and over (the state that made the vCPU thread spin forever). */
  forgedRequest: () =>
    cat(bootAsPoller(), movDword(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE), abi.AIRLOCK_POLL_REQUEST), loop(exitWith(abi.AIRLOCK_EXIT_IDLE))),
  /** Same with REQUEST_EXIT, the state only the host may set. */
  forgedRequestExit: () =>
    cat(
      bootAsPoller(),
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE), abi.AIRLOCK_POLL_REQUEST_EXIT),
      loop(exitWith(abi.AIRLOCK_EXIT_IDLE)),
    ),
  /** A poll_state no protocol step produces. */
  garbagePollState: () =>
    cat(bootAsPoller(), movDword(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE), 0x7777), loop(exitWith(abi.AIRLOCK_EXIT_IDLE))),
  /** Polls and exits IDLE in a loop without ever touching poll_state. */
  idleLoop: () => cat(bootAsPoller(), loop(exitWith(abi.AIRLOCK_EXIT_IDLE))),
  /** Answers the boot as a poller, then never stops (ignores its poll window). */
  neverStops: () => cat(bootAsPoller(), spinForever()),
  /** Answers the boot as a poller, then keeps setting poll_state back to READY while
   *  spinning, so the host's "take it out of its poll" never sticks. */
  keepsReady: () => cat(bootAsPoller(), loop(movDword(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE), abi.AIRLOCK_POLL_READY))),
  /** Each request: claim a heap high-water mark far beyond anything touched (clamped
   *  to the heap's end by the host), then answer with 0 bytes. */
  hugeHighWater: () =>
    cat(
      bootPlain(),
      loop(
        cat(
          movQword(ctrl(abi.AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER), 0x7fff_ffff),
          movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0),
          exitWith(abi.AIRLOCK_EXIT_RESPONSE),
        ),
      ),
    ),
  /** Polls but never parks: after each answer it spins until the host enters it with
   *  REQUEST_EXIT, then answers that request with 0 bytes.
   *  1: cmp dword [C+POLL_STATE], REQUEST_EXIT; jne 1b; response_len = 0; RESPONSE; jmp 1b */
  spinsUntilEntered: () => {
    const wait = cat(hex('833c25'), u32(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE)), Buffer.from([abi.AIRLOCK_POLL_REQUEST_EXIT]));
    const waitLoop = cat(wait, jumpBack(wait.length).subarray(0, 1).fill(0x75), jumpBack(wait.length).subarray(1));
    const answer = cat(movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0), exitWith(abi.AIRLOCK_EXIT_RESPONSE));
    return cat(bootAsPoller(), waitLoop, answer, jumpBack(waitLoop.length + answer.length));
  },
  /** Polls; when a request arrives, hands an empty answer over in memory (READY) and
   *  then calls the host anyway, as if the request were still its own.
   *  1: cmp dword [C+POLL_STATE], REQUEST; jb 1b; response_len = 0; poll_state = READY;
   *  HOST_CALL exit; jmp $ */
  hostCallAfterAnswer: () => {
    const wait = cat(hex('833c25'), u32(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE)), Buffer.from([abi.AIRLOCK_POLL_REQUEST]));
    return cat(
      bootAsPoller(),
      wait,
      Buffer.from([0x72, (256 - (wait.length + 2)) & 0xff]),
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0),
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE), abi.AIRLOCK_POLL_READY),
      exitWith(abi.AIRLOCK_EXIT_HOST_CALL),
      spinForever(),
    );
  },
  /** Parks after its boot; when entered with a request, writes READY (or IDLE) into
   *  poll_state itself, as if it had answered in memory, and exits IDLE; then spins.
   *  The request must still end (here: delivered as its answer), never be stranded. */
  parksDuringRequest: (state: number) =>
    cat(
      movDxPort(),
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_GUEST_FLAGS), abi.AIRLOCK_GUEST_FLAG_POLLS),
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0),
      exitWith(abi.AIRLOCK_EXIT_RESPONSE),
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE), abi.AIRLOCK_POLL_IDLE),
      exitWith(abi.AIRLOCK_EXIT_IDLE), // parked: the next entry carries a request
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0),
      movDword(ctrl(abi.AIRLOCK_CTRL_OFF_POLL_STATE), state),
      exitWith(abi.AIRLOCK_EXIT_IDLE),
      spinForever(),
    ),
  /** Boots, then each request spins forever (for kill tests). */
  spin: () => cat(bootPlain(), spinForever()),
};

/** Boots; each request writes one byte to each of `pages` 4 KiB heap pages from
 *  heap_addr, reports the end of them as heap_high_water and answers 0 bytes:
 *  mov rax,[C+HEAP_ADDR]; mov ecx,pages; 1: mov byte [rax],1; add rax,0x1000;
 *  dec ecx; jnz 1b; mov [C+HIGH_WATER],rax; response_len = 0; RESPONSE; jmp start */
export function touchHeap(pages: number): Buffer {
  const body = cat(
    cat(hex('488b0425'), u32(ctrl(abi.AIRLOCK_CTRL_OFF_HEAP_ADDR))),
    cat(hex('b9'), u32(pages)),
    hex('c60001 480500100000 ffc9 75f3'),
    cat(hex('48890425'), u32(ctrl(abi.AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER))),
    movDword(ctrl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN), 0),
    exitWith(abi.AIRLOCK_EXIT_RESPONSE),
  );
  return cat(bootPlain(), loop(body));
}
