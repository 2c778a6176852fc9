// examples.test.ts — every file in examples/ and every ```ts block in README.md and docs/
// runs as a user would run it: through tsx, importing the built package as 'airlock-vm'.
// A snippet must exit 0; where it prints a documented result, the output is checked.
// Everything runs twice: on KVM, and on the WebAssembly tier (AIRLOCK_DISABLE_KVM=1,
// so the default 'auto' picks WebAssembly and says why once on stderr).
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';

const run = promisify(execFile);
const root = join(__dirname, '..', '..');
const tsx = join(root, 'node_modules', '.bin', 'tsx');

type Tier = 'kvm' | 'wasm';

async function runTs(file: string, tier: Tier): Promise<{ stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '0' };
  if (tier === 'wasm') env.AIRLOCK_DISABLE_KVM = '1';
  else delete env.AIRLOCK_DISABLE_KVM;
  const out = await run(tsx, [file], { cwd: root, timeout: 120_000, env });
  // The notice proves which tier ran: it appears exactly when 'auto' fell back.
  if (tier === 'wasm') expect(out.stderr).toContain('AIRLOCK_KVM_UNAVAILABLE');
  else expect(out.stderr).not.toContain('AIRLOCK_KVM_UNAVAILABLE');
  return out;
}

/** ```ts blocks of a markdown file, skipping those fenced as ```ts no-run. */
function snippets(markdownFile: string): string[] {
  const text = readFileSync(markdownFile, 'utf8');
  return [...text.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
}

const expectedOutput: Record<string, RegExp[]> = {
  'simple.ts': [/message: 'Hello, World!'/],
  'calculator.ts': [/"result":15/, /"result":2.5/, /"result":1024/, /unknown operation: modulo/, /ERR_GUEST_EXCEPTION\] RangeError: division by zero/],
  'host-functions.ts': [/"name":"ALICE","score":45,"error":"HostFunctionError: no user with id 99"/, /"name":"BOB","score":75/],
  'user-modules.ts': [/area \{"r":2,"area":"12.57"\}/, /writer \{"count":1\}\nreader \{"count":1\}\nwriter \{"count":2\}\nreader \{"count":2\}/],
  'interrupt.ts': [/ERR_CANCELLED, terminatedBy=wall-clock/, /poisoned: true/, /after restore, poisoned: false/, /killed: ERR_CANCELLED, terminatedBy=kill/, /\{"finished":true\}/],
  'cpu-timeout.ts': [/compute: terminatedBy=cpu-time/, /wait: terminatedBy=wall-clock/],
  'unload.ts': [/\{"version":1,"n":2\}\n\{"version":2,"n":101\}/],
  'web-apis.ts': [/\{"host":"xn--bcher-kva.example","query":"héllo","utf8Bytes":6,"base64":"aMOpbGxv","cloned":true,"uuidLooksRight":true,"aborted":"true:done"\}/],
  'typescript-handler.ts': [/\{"cents":700\}/, /ERR_GUEST_EXCEPTION at handler:checkout:6:\d+/],
  'binary-data.ts': [/size=11 digestBytes=32 header=89504e47/],
  'hardened.ts': [/\{"eval":"EvalError","pollute":"TypeError","now":"2024-01-01T00:00:00.000Z","dice":\d\}/, /replayed identically: true/],
  'timers.ts': [/\{"log":\["attempt 1","microtask","attempt 2","attempt 3"\],"ticks":3\}/, /forever: ERR_CANCELLED, terminatedBy=wall-clock/],
  'async-host-calls.ts': [/\["apple=3","pear=4","HostFunctionError: no price for kiwi"\]/],
  'fetch.ts': [/\{"status":200,"weather":"sunny","denied":"TypeError: fetch refused: origin http:\/\/169\.254\.169\.254 is not in the policy's origins"\}/],
};

// Documented output of doc snippets, by file and snippet number.
const expectedSnippetOutput: Record<string, RegExp[]> = {
  'README.md 1': [/\{ name: 'World', message: 'Hello, World!' \}/],
  'README.md 2': [/^\{"tenant":"acme","calls":1,"sum":3\}\n\{"tenant":"acme","calls":1,"sum":10\}\n\{"error":"ERR_CANCELLED"\}$/m],
};

function suite(tier: Tier): void {
  // A server runs until stopped: multi-tenant.test.ts drives it.
  for (const file of readdirSync(join(root, 'examples')).filter((f) => f.endsWith('.ts') && f !== 'multi-tenant.ts')) {
    it(`examples/${file} runs`, async () => {
      const { stdout } = await runTs(join(root, 'examples', file), tier);
      for (const pattern of expectedOutput[file] ?? []) expect(stdout).toMatch(pattern);
    });
  }

  const docs = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => join('docs', f))];
  const dir = join(root, 'out', 'doc-snippets');
  mkdirSync(dir, { recursive: true });
  for (const doc of docs) {
    snippets(join(root, doc)).forEach((code, i) => {
      it(`${doc} snippet ${i + 1} runs`, async () => {
        // .mts: snippets are ES modules with top-level await, as users write them.
        const file = join(dir, `${doc.replace(/[/.]/g, '_')}_${i + 1}_${tier}.mts`);
        writeFileSync(file, code);
        const { stdout } = await runTs(file, tier);
        for (const pattern of expectedSnippetOutput[`${doc} ${i + 1}`] ?? []) expect(stdout).toMatch(pattern);
      });
    });
  }
}

describeKvm('examples [kvm]', () => suite('kvm'));
describe('examples [wasm]', () => suite('wasm'));
