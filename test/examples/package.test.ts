// package.test.ts — the built package as users load it with plain Node: require('airlock-vm')
// from CommonJS and `import` from an ES module both reach the same API, run a handler, and
// reject with errors that `instanceof` recognises.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';

const run = promisify(execFile);
const root = join(__dirname, '..', '..');

const body = `
  const proto = await new SandboxBuilder().build();
  const js = await proto.loadRuntime();
  js.addHandler('h', 'function handler(e) { return { doubled: e * 2 }; }');
  js.addHandler('bad', 'function handler() { throw new TypeError("no"); }');
  const loaded = await js.getLoadedSandbox();
  const thrown = await loaded.callHandler('bad', null).catch((e) => e);
  const errors = [thrown instanceof AirlockError, thrown instanceof GuestExceptionError, thrown instanceof Error, thrown.code];
  console.log(JSON.stringify({ result: await loaded.callHandler('h', 21), backend: loaded.backend, errors }));
  await loaded.dispose();
`;

describeKvm('package entry points', () => {
  it("works through require('airlock-vm') (CommonJS)", async () => {
    const code = `const { SandboxBuilder, AirlockError, GuestExceptionError } = require('airlock-vm');\n(async () => {${body}})().catch((e) => { console.error(e); process.exit(1); });`;
    const { stdout } = await run(process.execPath, ['-e', code], { cwd: root });
    expect(JSON.parse(stdout)).toEqual({ result: { doubled: 42 }, backend: 'kvm', errors: [true, true, true, 'ERR_GUEST_EXCEPTION'] });
  });

  it("works through import from 'airlock-vm' (ES module)", async () => {
    const code = `import { SandboxBuilder, AirlockError, GuestExceptionError } from 'airlock-vm';\n${body}`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', code], { cwd: root });
    expect(JSON.parse(stdout)).toEqual({ result: { doubled: 42 }, backend: 'kvm', errors: [true, true, true, 'ERR_GUEST_EXCEPTION'] });
  });

  it('gives ESM and CommonJS users the same module instance', async () => {
    const code = `import { createRequire } from 'node:module';
      import * as esm from 'airlock-vm';
      const cjs = createRequire(process.cwd() + '/')('airlock-vm');
      console.log(esm.SandboxBuilder === cjs.SandboxBuilder && esm.AirlockError === cjs.AirlockError);`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', code], { cwd: root });
    expect(stdout.trim()).toBe('true');
  });
});
