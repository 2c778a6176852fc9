// fetch-hostile.test.ts — the host side of fetch() reads what a guest sent as hostile:
// every malformed request (the guest controls the whole message, not only what the
// runtime's fetch() builds) is refused as a guest TypeError before any connection.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestFetch } from '../../src/fetch/guest-fetch.js';
import { CompletionKind } from '../../src/hostcalls/event-loop.js';

let server: Server;
let origin = '';
let requests = 0;

beforeAll(async () => {
  server = createServer((req, res) => {
    requests++;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => res.end(Buffer.concat(chunks).toString('hex')));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

describe('fetch: requests forged by the guest', () => {
  const fetcher = () => new GuestFetch({ origins: [origin], methods: ['POST'], allowAddresses: ['127.0.0.1'], maxRequestBodyBytes: 8 });
  const post = (extra: Record<string, unknown>) => ({ url: `${origin}/`, method: 'POST', headers: [], ...extra });

  const forged: [string, () => unknown, RegExp][] = [
    ['not an object', () => 'GET /', /malformed request$/],
    ['no url', () => ({ method: 'POST', headers: [] }), /malformed request$/],
    ['headers not pairs of strings', () => post({ headers: [['a', 1]] }), /malformed request headers/],
    ['a body that is not a string', () => post({ body: [1, 2] }), /malformed request body/],
    ['both a text and a binary body', () => post({ body: 'x', bodyBase64: 'AA==' }), /malformed request body/],
    ['a binary body that is not base64', () => post({ bodyBase64: 'A*==' }), /malformed request body/],
    ['a binary body cut short', () => post({ bodyBase64: 'AAA' }), /malformed request body/],
    ['a binary body that is not a string', () => post({ bodyBase64: 12 }), /malformed request body/],
    ['a binary body over the limit', () => post({ bodyBase64: Buffer.alloc(9).toString('base64') }), /maxRequestBodyBytes \(8\)/],
  ];
  for (const [what, request, rule] of forged) {
    it(`refuses ${what} without connecting`, async () => {
      const f = fetcher();
      const before = requests;
      const outcome = await f.fetch(request());
      await f.close();
      expect(outcome.kind).toBe(CompletionKind.TypeError);
      expect(outcome.kind === CompletionKind.TypeError && outcome.message).toMatch(/^fetch refused: /);
      expect(outcome.kind === CompletionKind.TypeError && outcome.message).toMatch(rule);
      expect(requests).toBe(before);
    });
  }

  it('sends a well-formed binary body byte for byte', async () => {
    const f = fetcher();
    const outcome = await f.fetch(post({ bodyBase64: Buffer.from([0, 255, 7]).toString('base64') }));
    await f.close();
    expect(outcome.kind).toBe(CompletionKind.Value);
    const response = JSON.parse(outcome.kind === CompletionKind.Value ? outcome.json ?? '' : '') as { body: string };
    expect(Buffer.from(response.body, 'base64').toString()).toBe('00ff07');
  });
});
