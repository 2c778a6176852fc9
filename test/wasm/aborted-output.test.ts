// aborted-output.test.ts — hostile guest module: what the host passes on from a guest that
// traps or aborts mid-request (the console lines of an ERR_GUEST_ABORT call). The
// guest's response_len is a claim: the worker copies at most the output buffer and
// nothing for a larger claim, and src/ decodes the bytes as hostile; the abort's own
// text is never console output.
import { afterEach, describe, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { consoleBeforeStop, encodeMessage } from '../../src/engine/protocol.js';
import { Outcome } from '../../src/engine/wasm/channel.js';
import { WasmEngine } from '../../src/engine/wasm/index.js';
import { GuestWorker } from '../../src/engine/wasm/pool.js';
import type { AirlockError } from '../../src/errors.js';
import { HOSTILE_SIZES, hostileModule, type Hostility } from './hostile-module.js';

const engines: WasmEngine[] = [];
afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.dispose()));
});

/** An engine serving a booted hostile guest as if it had booted it. */
async function hostileEngine(echoThen: NonNullable<Hostility['echoThen']>): Promise<WasmEngine> {
  const w = await GuestWorker.start(hostileModule({ echoThen }), true);
  const booted = await w.boot(HOSTILE_SIZES);
  expect(booted.outcome).toBe(Outcome.Ok);
  const engine = new WasmEngine(HOSTILE_SIZES, async () => new Uint8Array(0));
  Object.assign(engine as unknown as object, { worker: w, booted: true });
  engines.push(engine);
  return engine;
}

async function aborted(p: Promise<unknown>): Promise<AirlockError> {
  const e = (await p.then(
    () => undefined,
    (err: unknown) => err,
  )) as AirlockError;
  expect(e?.code).toBe('ERR_GUEST_ABORT');
  return e;
}

const line = (level: string, text: string) => encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, [level, text]);
const lines = (bytes: Uint8Array | undefined) => (bytes ? consoleBeforeStop(bytes).map((x) => [x.level, x.text.toString()]) : []);

describe('hostile guest module: the output of an aborted request', () => {
  for (const stop of ['trap', 'abort'] as const) {
    it(`passes on the console lines written before a guest ${stop}`, async () => {
      const engine = await hostileEngine({ stop });
      const request = Buffer.concat([line('log', 'one'), line('warn', 'two')]);
      const e = await aborted(engine.exchange(request));
      expect(e.message).toMatch(stop === 'trap' ? /guest trapped/ : /guest abort: hostile abort/);
      expect(Buffer.compare(e.guestOutput as Buffer, request)).toBe(0);
      expect(lines(e.guestOutput)).toEqual([
        ['log', 'one'],
        ['warn', 'two'],
      ]);
    });
  }

  it('passes on nothing for a response_len past the output buffer, whatever its size', async () => {
    for (const claim of [0xffff_ffff, HOSTILE_SIZES.outputSize + 1, 0x8000_0000]) {
      const engine = await hostileEngine({ stop: 'trap', claim });
      const e = await aborted(engine.exchange(line('log', 'not read')));
      expect(e.guestOutput).toBeUndefined();
    }
  });

  it('reads a response_len of the whole output buffer within it, cut to the room after the error text', async () => {
    const engine = await hostileEngine({ stop: 'abort', claim: HOSTILE_SIZES.outputSize });
    const first = line('log', 'in front of zeros');
    const e = await aborted(engine.exchange(first));
    // The data area is as large as the output buffer here: the error text comes first.
    expect(e.guestOutput?.byteLength).toBe(HOSTILE_SIZES.outputSize - Buffer.byteLength(e.message));
    expect(lines(e.guestOutput)).toEqual([['log', 'in front of zeros']]);
  });

  it('decodes forged lengths only as far as they are well-formed', async () => {
    const overrun = line('log', 'lost');
    overrun.writeUInt32LE(0x7fff_ffff, 8); // the header's body length
    const forgedField = line('warn', 'cut');
    forgedField.writeUInt32LE(0x7fff_ffff, abi.AIRLOCK_MSG_HEADER_SIZE);
    for (const bad of [overrun, forgedField]) {
      const engine = await hostileEngine({ stop: 'trap' });
      const e = await aborted(engine.exchange(Buffer.concat([line('log', 'kept'), bad, line('log', 'after')])));
      expect(lines(e.guestOutput)).toEqual([['log', 'kept']]);
    }
  });

  it('never passes on an ABORT message as a console line', async () => {
    const engine = await hostileEngine({ stop: 'abort' });
    const request = Buffer.concat([encodeMessage(abi.AIRLOCK_MSG_ABORT, 0, ['not a line']), line('log', 'after the abort')]);
    const e = await aborted(engine.exchange(request));
    expect(lines(e.guestOutput)).toEqual([]);
  });
});
