// event-loop-hostile.test.ts — the event loop's protocol steps (host calls to the
// reserved `airlock:loop` module) forged with arbitrary arguments, as a hostile guest
// could write them: each is a valid step or a violation that stops and poisons that
// sandbox (ERR_GUEST_ABORT), and the host never waits on the guest's say-so.
import { afterEach, expect, it } from 'vitest';
import { sizeLimits } from '../../src/builder.js';
import { SandboxCore } from '../../src/core.js';
import * as abi from '../../src/engine/abi.generated.js';
import { encodeMessage, splitOutput } from '../../src/engine/protocol.js';
import { engineFactory } from '../../src/engine/select.js';
import type { LoadedJSSandbox } from '../../src/index.js';
import { ProtoJSSandbox } from '../../src/sandbox.js';
import { describeEachBackend, type BackendHarness } from './backends.js';

/**
 * A sandbox whose guest can send any loop step: a call of the host function
 * `forge.step(name, argsJson)` reaches the host as HOST_CALL('airlock:loop', name, argsJson).
 */
async function forgingSandbox(h: BackendHarness): Promise<LoadedJSSandbox> {
  const engine = engineFactory(h.backend);
  const config = {
    heapSize: sizeLimits.heap.default,
    stackSize: sizeLimits.scratch.default,
    inputSize: sizeLimits.inputBuffer.default,
    outputSize: sizeLimits.outputBuffer.default,
    consoleLimit: sizeLimits.consoleLimit.default,
  };
  const core = await SandboxCore.create(config, (c, onHostCall) =>
    engine(c, (output) => {
      const { final } = splitOutput(output);
      if (final.fields[0]?.toString() !== 'forge') return onHostCall(output);
      const [name, argsJson] = JSON.parse(final.fields[2].toString()) as [string, string];
      return onHostCall(encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, ['airlock:loop', name, argsJson]));
    }),
  );
  const proto = new ProtoJSSandbox(core);
  proto.hostModule('forge').register('step', () => 'not reached');
  const js = await proto.loadRuntime();
  js.addHandler('h', `import { step } from 'host:forge';
    export default function (e) { try { return { value: step(e.name, e.args) }; } catch (err) { return { error: err.name + ': ' + err.message }; } }`);
  js.addHandler('ok', 'export default function () { return "ok"; }');
  return js.getLoadedSandbox();
}

describeEachBackend('hostile event loop steps', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  const violations: [string, string, string][] = [
    ['a wait with nothing to wait for', 'wait', '[-1]'],
    ['a wait with a delay that is not a number', 'wait', '["soon"]'],
    ['a wait with a negative delay', 'wait', '[-5]'],
    ['a wait with two arguments', 'wait', '[1,2]'],
    ['a sleep with no timer', 'sleep', '[-1]'],
    ['a sleep with a delay that is not a number', 'sleep', '["soon"]'],
    ['a sleep with three arguments', 'sleep', '[1,2,3]'],
    ['a sleep whose instant is not a number', 'sleep', '[1,"now"]'],
    ['a sleep with a negative instant', 'sleep', '[1,-2]'],
    ['a start whose arguments are not (module, function, array)', 'start', '[1,2,3]'],
    ['a start with a missing argument array', 'start', '["m","f"]'],
    ['an unknown step', 'spin', '[]'],
  ];
  for (const [what, name, args] of violations) {
    it(`stops and poisons the sandbox for ${what}`, async () => {
      const loaded = await forgingSandbox(h);
      open.push(loaded);
      await expect(loaded.callHandler('h', { name, args }, { wallClockTimeoutMs: 10_000 })).rejects.toMatchObject({ code: 'ERR_GUEST_ABORT' });
      expect(loaded.poisoned).toBe(true);
    });
  }

  it('answers a zero-delay wait at once with no completions', async () => {
    const loaded = await forgingSandbox(h);
    open.push(loaded);
    expect(await loaded.callHandler('h', { name: 'wait', args: '[0]' })).toEqual({ value: [] });
    expect(loaded.poisoned).toBe(false);
  });

  it('answers a zero-delay sleep at once with no completions', async () => {
    const loaded = await forgingSandbox(h);
    open.push(loaded);
    expect(await loaded.callHandler('h', { name: 'sleep', args: '[0]' })).toEqual({ value: [] });
    expect(await loaded.callHandler('h', { name: 'sleep', args: '[0,12.5]' })).toEqual({ value: [] });
    expect(loaded.poisoned).toBe(false);
  });

  it('refuses to start an unregistered host function with a catchable error', async () => {
    const loaded = await forgingSandbox(h);
    open.push(loaded);
    expect(await loaded.callHandler('h', { name: 'start', args: '["nope","f",[]]' })).toEqual({
      error: "HostFunctionError: host function 'nope.f' is not registered",
    });
    expect(await loaded.callHandler('ok', {})).toBe('ok');
  });

  it('bounds a huge delay by the wall clock the embedder set', async () => {
    const loaded = await forgingSandbox(h);
    open.push(loaded);
    await expect(loaded.callHandler('h', { name: 'wait', args: '[1e300]' }, { wallClockTimeoutMs: 100 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    expect(loaded.lastCallStats?.terminatedBy).toBe('wall-clock');
  });
});
