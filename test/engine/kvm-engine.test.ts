// kvm-engine.test.ts — the KVM engine's own refusals reach the facade as AirlockErrors
// with their code, not as the addon's plain errors.
import { expect, it } from 'vitest';
import { AirlockError, InvalidArgumentError } from '../../src/errors.js';
import { KvmEngine } from '../../src/engine/kvm-engine.js';
import { describeKvm } from '../support/kvm.js';

describeKvm('KVM engine', () => {
  it('turns the addon refusing a configuration into an InvalidArgumentError', () => {
    const bad = { heapSize: 0, stackSize: 1 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 4096 };
    let thrown: unknown;
    try {
      new KvmEngine(bad, async () => new Uint8Array());
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(InvalidArgumentError);
    expect(thrown).toBeInstanceOf(AirlockError);
    expect((thrown as AirlockError).code).toBe('ERR_INVALID_ARG');
    expect((thrown as Error).message).toMatch(/heapSize/);
  });
});
