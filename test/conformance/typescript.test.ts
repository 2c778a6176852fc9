// typescript.test.ts — TypeScript handlers and modules on both tiers: types are stripped on
// the host, stack traces keep the user's lines and columns, and errors name where.
import { expect, it } from 'vitest';
import { describeEachBackend } from './backends.js';

const TS_HANDLER = `import { scale, type Scaled } from 'user:geometry';
interface Event { n: number; label?: string }

export function handler(event: Event): Scaled & { label: string } {
  const label: string = event.label ?? 'none';
  if ((event.n as number) < 0) throw new RangeError(\`negative: \${event.n}\`);
  return { ...scale<number>(event.n), label };
}
`;

const TS_MODULE = `export type Scaled = { value: number };
export function scale<T extends number>(n: T): Scaled {
  return { value: (n as number) * 2 } satisfies Scaled;
}
`;

describeEachBackend('TypeScript', (h) => {
  async function load() {
    const proto = await h.builder().build();
    const js = await proto.loadRuntime();
    js.addModule('geometry', TS_MODULE, 'user', { typescript: true });
    js.addHandler('ts', TS_HANDLER, { typescript: true });
    return js.getLoadedSandbox();
  }

  it('runs handlers and modules written in TypeScript', async () => {
    const sandbox = await load();
    try {
      expect(await sandbox.callHandler('ts', { n: 21 })).toEqual({ value: 42, label: 'none' });
    } finally {
      await sandbox.dispose();
    }
  });

  it("keeps the user's line and column in guest stack traces", async () => {
    const sandbox = await load();
    try {
      const err = await sandbox.callHandler('ts', { n: -1 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_GUEST_EXCEPTION', guestName: 'RangeError', message: 'negative: -1' });
      // The throw is on line 6 of TS_HANDLER: the reported column must point into the
      // user's text at the throw statement, as if no types had been there.
      const line = TS_HANDLER.split('\n')[5];
      const column = Number(/handler:ts:6:(\d+)/.exec((err as { guestStack: string }).guestStack)?.[1]);
      // QuickJS places a constructor call at its argument list.
      expect(line.slice(0, column - 1)).toMatch(/throw new RangeError$/);
    } finally {
      await sandbox.dispose();
    }
  });

  it('reports a syntax error with line and column as ERR_COMPILE', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    try {
      expect(() => js.addHandler('bad', 'function handler(e: number) {\n  return e +;\n}', { typescript: true })).toThrow(
        expect.objectContaining({ code: 'ERR_COMPILE', message: expect.stringMatching(/^handler 'bad': TypeScript syntax error at 2:13: /) }),
      );
      expect(() => js.addModule('m', 'export enum Color { Red }', 'user', { typescript: true })).toThrow(
        expect.objectContaining({ code: 'ERR_COMPILE', message: expect.stringMatching(/^module 'user:m': TypeScript at 1:1 \(EnumDeclaration\) needs code generation/) }),
      );
      expect(() => js.addHandler('x', 'function handler() {}', { typescript: 'yes' as unknown as boolean })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG' }),
      );
      // The sandbox is still usable after refusals.
      js.addHandler('ok', 'export const handler = (e: number): number => e + 1;', { typescript: true });
      const loaded = await js.getLoadedSandbox();
      expect(await loaded.callHandler('ok', 1)).toBe(2);
      await loaded.dispose();
    } catch (e) {
      await js.dispose();
      throw e;
    }
  });

  it('leaves JavaScript untouched without the option', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    js.addHandler('js', 'function handler(e: number) { return e; }');
    await expect(js.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_COMPILE' });
    await js.dispose();
  });
});
