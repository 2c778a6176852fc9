// fetch.test.ts — the capability-gated fetch() on both tiers against a local node:http
// server: off by default; allowed origins, methods and sizes; refusals as guest
// TypeErrors naming the rule; redirects checked hop by hop; loopback refused unless
// the policy names the address, also when a host name resolves to it.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import type { FetchPolicy, LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

let server: Server;
let port = 0;
let origin = '';
let otherOrigin = ''; // a second origin (same server, another name) the policy leaves out

beforeAll(async () => {
  server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/json') {
      res.setHeader('content-type', 'application/json');
      res.setHeader('x-test', 'yes');
      res.end(JSON.stringify({ hello: 'world', method: req.method }));
    } else if (url.pathname === '/echo') {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => res.end(JSON.stringify({ method: req.method, body, header: req.headers['x-airlock'] ?? null })));
    } else if (url.pathname === '/echo-bytes') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => res.end(JSON.stringify({ hex: Buffer.concat(chunks).toString('hex'), type: req.headers['content-type'] ?? null })));
    } else if (url.pathname === '/bytes') {
      res.end(Buffer.from([0, 1, 2, 250, 255]));
    } else if (url.pathname === '/big') {
      // Declared also for HEAD, which sends no body.
      res.setHeader('content-length', 4096);
      res.end(req.method === 'HEAD' ? undefined : 'x'.repeat(4096));
    } else if (url.pathname === '/chunked-big') {
      res.write('y'.repeat(3000));
      res.end('y'.repeat(3000));
    } else if (url.pathname === '/redirect') {
      res.statusCode = 302;
      res.setHeader('location', url.searchParams.get('to') ?? '/json');
      res.end();
    } else if (url.pathname === '/hang') {
      // never answers; the server closes it at the end
    } else {
      res.statusCode = 404;
      res.end('not found');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
  origin = `http://127.0.0.1:${port}`;
  otherOrigin = `http://localhost:${port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

const FETCHER = `// A body the guest builds itself (events are JSON): bytes in the given shape.
function bodyOf(req) {
  switch (req.bodyKind) {
    case 'uint8array': return new Uint8Array(req.bytes);
    case 'arraybuffer': return new Uint8Array(req.bytes).buffer;
    case 'dataview': return new DataView(new Uint8Array([9, 9, ...req.bytes, 9]).buffer, 2, req.bytes.length);
    case 'int16array': return new Int16Array(new Uint8Array(req.bytes).buffer);
    case 'search': return new URLSearchParams(req.form);
    case 'object': return { not: 'a body' };
  }
}
export default async function (req) {
  try {
    const init = req.bodyKind ? { ...req.init, body: bodyOf(req) } : req.init;
    const r = await fetch(req.url, init);
    const out = { status: r.status, ok: r.ok, redirected: r.redirected, url: r.url, type: r.headers.get('content-type'), xTest: r.headers.get('X-Test') };
    if (req.read === 'json') out.body = await r.json();
    else if (req.read === 'bytes') out.body = Array.from(new Uint8Array(await r.arrayBuffer()));
    else out.body = await r.text();
    try { await r.text(); out.second = 'read twice'; } catch (e) { out.second = e.name; }
    return out;
  } catch (e) {
    return { error: e.name + ': ' + e.message };
  }
}`;

describeEachBackend('fetch', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  async function sandbox(policy?: FetchPolicy): Promise<LoadedJSSandbox> {
    const builder = h.builder();
    if (policy) builder.setFetchPolicy(policy);
    const loaded = await h.load({ f: FETCHER }, { builder });
    open.push(loaded);
    return loaded;
  }
  const loopbackAllowed = (extra: Partial<FetchPolicy> = {}): FetchPolicy => ({ origins: [origin], allowAddresses: ['127.0.0.1'], ...extra });

  it('is refused with a TypeError when the embedder granted nothing', async () => {
    const loaded = await sandbox();
    expect(await loaded.callHandler('f', { url: `${origin}/json` })).toEqual({ error: expect.stringMatching(/^TypeError: fetch is not enabled for this sandbox/) });
  });

  it('fetches from an allowed origin: status, headers, json(), a body read once', async () => {
    const loaded = await sandbox(loopbackAllowed());
    expect(await loaded.callHandler('f', { url: `${origin}/json`, read: 'json' })).toEqual({
      status: 200,
      ok: true,
      redirected: false,
      url: `${origin}/json`,
      type: 'application/json',
      xTest: 'yes',
      body: { hello: 'world', method: 'GET' },
      second: 'TypeError',
    });
  });

  it('carries binary bodies byte for byte through arrayBuffer()', async () => {
    const loaded = await sandbox(loopbackAllowed());
    expect(await loaded.callHandler('f', { url: `${origin}/bytes`, read: 'bytes' })).toMatchObject({ body: [0, 1, 2, 250, 255] });
  });

  it('sends methods, headers and string bodies the policy allows', async () => {
    const loaded = await sandbox(loopbackAllowed({ methods: ['GET', 'POST'] }));
    const init = { method: 'POST', body: 'payload', headers: { 'X-Airlock': 'hi' } };
    expect(await loaded.callHandler('f', { url: `${origin}/echo`, init, read: 'json' })).toMatchObject({
      body: { method: 'POST', body: 'payload', header: 'hi' },
    });
  });

  it('sends binary bodies byte for byte: typed arrays, ArrayBuffer, the viewed bytes of a DataView', async () => {
    const loaded = await sandbox(loopbackAllowed({ methods: ['POST', 'PUT'] }));
    const bytes = [0, 1, 2, 250, 255, 128];
    for (const bodyKind of ['uint8array', 'arraybuffer', 'dataview', 'int16array']) {
      const result = await loaded.callHandler('f', { url: `${origin}/echo-bytes`, init: { method: 'PUT' }, bodyKind, bytes, read: 'json' });
      // A binary body has no content type of its own (the Fetch standard's extraction).
      expect(result, bodyKind).toMatchObject({ status: 200, body: { hex: '000102faff80', type: null } });
    }
    const empty = await loaded.callHandler('f', { url: `${origin}/echo-bytes`, init: { method: 'POST' }, bodyKind: 'uint8array', bytes: [], read: 'json' });
    expect(empty).toMatchObject({ body: { hex: '' } });
  });

  it('sends URLSearchParams as a form with its content type, unless the caller set one', async () => {
    const loaded = await sandbox(loopbackAllowed({ methods: ['POST'] }));
    const form = { a: '1', b: 'x y&z' };
    const sent = await loaded.callHandler('f', { url: `${origin}/echo-bytes`, init: { method: 'POST' }, bodyKind: 'search', form, read: 'json' });
    expect(sent).toMatchObject({ body: { hex: Buffer.from('a=1&b=x+y%26z').toString('hex'), type: 'application/x-www-form-urlencoded;charset=UTF-8' } });
    const typed = await loaded.callHandler('f', { url: `${origin}/echo-bytes`, init: { method: 'POST', headers: { 'Content-Type': 'text/x-mine' } }, bodyKind: 'search', form, read: 'json' });
    expect(typed).toMatchObject({ body: { type: 'text/x-mine' } });
  });

  it('refuses a body of another type with a TypeError naming the accepted ones', async () => {
    const loaded = await sandbox(loopbackAllowed({ methods: ['POST'] }));
    const result = (await loaded.callHandler('f', { url: `${origin}/echo-bytes`, init: { method: 'POST' }, bodyKind: 'object' })) as { error?: string };
    expect(result.error).toMatch(/^TypeError: fetch: a request body must be a string, an ArrayBuffer, a typed array or DataView, or URLSearchParams \(got an instance of Object\)/);
  });

  it('counts a binary body in bytes against maxRequestBodyBytes', async () => {
    const loaded = await sandbox(loopbackAllowed({ methods: ['POST'], maxRequestBodyBytes: 4 }));
    const ok = await loaded.callHandler('f', { url: `${origin}/echo-bytes`, init: { method: 'POST' }, bodyKind: 'uint8array', bytes: [1, 2, 3, 4], read: 'json' });
    expect(ok).toMatchObject({ body: { hex: '01020304' } });
    const over = (await loaded.callHandler('f', { url: `${origin}/echo-bytes`, init: { method: 'POST' }, bodyKind: 'uint8array', bytes: [1, 2, 3, 4, 5] })) as { error?: string };
    expect(over.error).toMatch(/maxRequestBodyBytes \(4\)/);
  });

  const refusals: [string, () => FetchPolicy, Record<string, unknown>, RegExp][] = [
    ['an origin outside the list', () => loopbackAllowed(), { url: `${'http://127.0.0.2'}:${1}/json` }, /origin http:\/\/127\.0\.0\.2:1 is not in the policy's origins/],
    ['a method outside the list', () => loopbackAllowed(), { url: '/echo', init: { method: 'DELETE' } }, /method DELETE is not in the policy's methods/],
    ['a loopback address the policy does not name', () => ({ origins: [origin] }), { url: '/json' }, /address 127\.0\.0\.1 is loopback/],
    ['a host name that resolves to loopback', () => ({ origins: [otherOrigin] }), { url: 'other:/json' }, /localhost: address (127\.0\.0\.1|::1) is loopback/],
    ['a redirect to an origin outside the list', () => loopbackAllowed(), { url: `/redirect?to=${encodeURIComponent('http://127.0.0.3:1/x')}` }, /origin http:\/\/127\.0\.0\.3:1 is not in the policy's origins/],
    ['a redirect to a metadata address', () => ({ origins: [origin, 'http://169.254.169.254'], allowAddresses: ['127.0.0.1'] }), { url: `/redirect?to=${encodeURIComponent('http://169.254.169.254/latest/meta-data')}` }, /address 169\.254\.169\.254 is link-local/],
    ['a response body larger than the limit (declared)', () => loopbackAllowed({ maxResponseBodyBytes: 1000 }), { url: '/big' }, /maxResponseBodyBytes \(1000\)/],
    ['a response body larger than the limit (streamed)', () => loopbackAllowed({ maxResponseBodyBytes: 5000 }), { url: '/chunked-big' }, /maxResponseBodyBytes \(5000\)/],
    ['a request body larger than the limit', () => loopbackAllowed({ methods: ['POST'], maxRequestBodyBytes: 3 }), { url: '/echo', init: { method: 'POST', body: 'four' } }, /maxRequestBodyBytes \(3\)/],
    ['request headers larger than the limit', () => loopbackAllowed({ maxRequestHeaderBytes: 10 }), { url: '/json', init: { headers: { 'x-long': 'a'.repeat(20) } } }, /maxRequestHeaderBytes \(10\)/],
    ['a server that does not answer in time', () => loopbackAllowed({ timeoutMs: 200 }), { url: '/hang' }, /timeoutMs \(200 ms\)/],
    ['more redirects than allowed', () => loopbackAllowed({ maxRedirects: 0 }), { url: '/redirect' }, /maxRedirects \(0\)/],
    ['an IPv4-compatible IPv6 address', () => ({ origins: ['http://[::7f00:1]:1'] }), { url: 'http://[::127.0.0.1]:1/json' }, /address ::7f00:1 is IPv4-compatible/],
    ['a non-http scheme', () => loopbackAllowed(), { url: 'file:///etc/passwd' }, /file: URLs are not fetchable/],
  ];
  for (const [what, policy, req, rule] of refusals) {
    it(`refuses ${what} with a TypeError naming the rule`, async () => {
      const loaded = await sandbox(policy());
      const url = String(req.url).startsWith('other:') ? otherOrigin + String(req.url).slice(6) : String(req.url).startsWith('/') ? origin + String(req.url) : req.url;
      const result = (await loaded.callHandler('f', { ...req, url })) as { error?: string };
      expect(result.error).toMatch(/^TypeError: fetch (refused|failed): /);
      expect(result.error).toMatch(rule);
      // A refusal is the guest's business: the sandbox stays usable.
      expect(loaded.poisoned).toBe(false);
    });
  }

  it('answers HEAD for a resource larger than maxResponseBodyBytes (no body is read)', async () => {
    const loaded = await sandbox(loopbackAllowed({ maxResponseBodyBytes: 1000 }));
    expect(await loaded.callHandler('f', { url: `${origin}/big`, init: { method: 'HEAD' } })).toMatchObject({ status: 200, body: '' });
  });

  it('follows allowed redirects and says so', async () => {
    const loaded = await sandbox(loopbackAllowed());
    expect(await loaded.callHandler('f', { url: `${origin}/redirect?to=/json`, read: 'json' })).toMatchObject({
      status: 200,
      redirected: true,
      url: `${origin}/json`,
    });
  });

  it('reaches a host name once the policy names the address it resolves to', async () => {
    const loaded = await sandbox({ origins: [otherOrigin], allowAddresses: ['127.0.0.1', '::1'] });
    expect(await loaded.callHandler('f', { url: `${otherOrigin}/json`, read: 'json' })).toMatchObject({ status: 200, body: { hello: 'world' } });
  });

  it('rejects malformed policies at the builder', () => {
    const bad: unknown[] = [
      { origins: ['ftp://example.com'] },
      { origins: ['https://example.com/path'] },
      { origins: 'https://example.com' },
      { origins: [], allowAddresses: ['not-an-ip'] },
      { origins: [], allowAddresses: ['127.0.0.1/'] }, // not /0: that would allow every address
      { origins: [], allowAddresses: ['10.0.0.0/8/16'] },
      { origins: [], allowAddresses: ['10.0.0.0/0x8'] },
      { origins: [], timeoutMs: 0 },
      { origins: [], maxRedirect: 3 },
    ];
    for (const policy of bad) {
      expect(() => h.builder().setFetchPolicy(policy as FetchPolicy), JSON.stringify(policy)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
  });
});
