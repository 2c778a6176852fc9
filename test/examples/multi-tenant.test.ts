// multi-tenant.test.ts — runs examples/multi-tenant.ts as a user would (tsx, the built
// package): starts the server, sends a few requests per tenant (host-side state, guest
// state, a stopped call and its rollback, metrics), then stops it with SIGTERM.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';

const root = join(__dirname, '..', '..');
const tsx = join(root, 'node_modules', '.bin', 'tsx');

type Tier = 'kvm' | 'wasm';

function start(tier: Tier): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '0' };
  if (tier === 'wasm') env.AIRLOCK_DISABLE_KVM = '1';
  else delete env.AIRLOCK_DISABLE_KVM;
  delete env.PORT;
  const child = spawn(tsx, [join(root, 'examples', 'multi-tenant.ts')], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve({ child, url: m[1], output: () => out });
    });
    child.once('exit', (code) => reject(new Error(`the server exited (${code}) before listening:\n${out}\n${err}`)));
  });
}

async function post(url: string, body: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(url, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  return { status: res.status, json: await res.json() };
}

function suite(tier: Tier): void {
  it('serves tenants, rolls back a stopped call and shuts down cleanly', async () => {
    const { child, url, output } = await start(tier);
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      expect(await post(`${url}/acme`, { x: 1 })).toEqual({ status: 200, json: { tenant: 'acme', hits: 1, echo: { x: 1 } } });
      expect((await post(`${url}/acme`, {})).json.hits).toBe(2);
      expect(await post(`${url}/globex`, { values: [1, 2, 3] })).toEqual({ status: 200, json: { tenant: 'globex', calls: 1, sum: 6 } });
      expect((await post(`${url}/globex`, {})).json.calls).toBe(2);
      const stopped = await post(`${url}/globex`, { loop: true });
      expect(stopped.status).toBe(504);
      expect(stopped.json.error).toBe('ERR_CANCELLED');
      // Rolled back to the snapshot: guest state starts over, host-side state does not.
      expect((await post(`${url}/globex`, {})).json.calls).toBe(1);
      expect((await post(`${url}/acme`, {})).json.hits).toBe(3);
      expect((await post(`${url}/nobody`, {})).status).toBe(404);
      const metrics = await (await fetch(`${url}/metrics`)).text();
      expect(metrics).toContain('airlock_pool_calls_total{tenant="globex",outcome="ERR_CANCELLED"} 1');
      expect(metrics).toContain('airlock_pool_restores_total{tenant="globex"} 1');
      expect(output()).toMatch(/\[globex #\d+\] log: globex call 1/);
      expect(output()).toContain('[globex] sandbox rolled back to its snapshot');
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(output()).toContain('closed');
  });
}

describeKvm('examples/multi-tenant.ts [kvm]', () => {
  suite('kvm');
});
describe('examples/multi-tenant.ts [wasm]', () => suite('wasm'));
