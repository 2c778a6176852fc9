// tier-choice.test.ts — setBackend(): 'auto' picks KVM when usable and otherwise falls
// back to WebAssembly with one notice naming the reasons; 'kvm' where KVM cannot run
// rejects with ERR_UNAVAILABLE listing each reason and its fix. Run in child processes
// because the choice is made once per process.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { SandboxBuilder } from '../../src/index.js';
import { describeKvm } from '../support/kvm.js';

const run = promisify(execFile);
const root = join(__dirname, '..', '..');
const tsx = join(root, 'node_modules', '.bin', 'tsx');

async function script(code: string, env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string }> {
  const src = `import { SandboxBuilder } from ${JSON.stringify(join(root, 'src/index.ts'))};\n(async () => {\n${code}\n})().catch((e) => { console.log(JSON.stringify({ thrown: e.code, message: e.message, reasons: e.reasons })); });`;
  return run(tsx, ['-e', src], { cwd: root, env: { ...process.env, ...env } });
}

describe('tier choice', () => {
  it('rejects anything but kvm, wasm or auto', () => {
    expect(() => new SandboxBuilder().setBackend('gpu' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  });

  it("falls back to WebAssembly for 'auto' when KVM is unusable, saying why once", async () => {
    const { stdout, stderr } = await script(
      `const a = await new SandboxBuilder().build();
       const b = await new SandboxBuilder().setBackend('auto').build();
       console.log(JSON.stringify({ a: a.backend, b: b.backend }));
       await a.dispose(); await b.dispose();`,
      { AIRLOCK_DISABLE_KVM: '1' },
    );
    expect(JSON.parse(stdout.trim().split('\n').at(-1)!)).toEqual({ a: 'wasm', b: 'wasm' });
    const notices = stderr.match(/AIRLOCK_KVM_UNAVAILABLE/g) ?? [];
    expect(notices).toHaveLength(1);
    expect(stderr).toContain('AIRLOCK_DISABLE_KVM=1');
  });

  it("rejects setBackend('kvm') with ERR_UNAVAILABLE listing each reason and its fix", async () => {
    const { stdout } = await script(`await new SandboxBuilder().setBackend('kvm').build(); console.log('{}');`, { AIRLOCK_DISABLE_KVM: '1' });
    const out = JSON.parse(stdout.trim().split('\n').at(-1)!);
    expect(out.thrown).toBe('ERR_UNAVAILABLE');
    expect(out.reasons).toEqual(['KVM is disabled by AIRLOCK_DISABLE_KVM=1 (unset it to use KVM)']);
    expect(out.message).toContain('unset it to use KVM');
  });
});

describeKvm('tier choice with KVM usable', () => {
  it("picks KVM for 'auto' (the default)", async () => {
    const proto = await new SandboxBuilder().build();
    try {
      expect(proto.backend).toBe('kvm');
    } finally {
      await proto.dispose();
    }
  });
});
