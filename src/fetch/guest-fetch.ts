// guest-fetch.ts — performs a guest's fetch() under its sandbox's FetchPolicy with
// undici (the fetch Node itself ships): every hop is checked against the allow-list,
// redirects are followed here (never by undici), and the connection goes to the very
// address that was checked, since the only name resolution is the Agent's own lookup.
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { isIP } from 'node:net';
import { Agent, fetch as undiciFetch } from 'undici';
import { CompletionKind, type Outcome } from '../hostcalls/event-loop.js';
import { addressRefusal, resolveFetchPolicy, type FetchPolicy, type ResolvedFetchPolicy } from './policy.js';

export type { FetchPolicy } from './policy.js';

/** The reserved host module the guest's fetch() starts its async call on. */
export const FETCH_MODULE = 'airlock:fetch';

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A refusal by the policy: the guest gets a TypeError with this message. */
class FetchDenied extends Error {}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

export class GuestFetch {
  private readonly policy: ResolvedFetchPolicy;
  private readonly agent: Agent;

  constructor(policy: FetchPolicy) {
    this.policy = resolveFetchPolicy(policy);
    this.agent = new Agent({
      maxHeaderSize: this.policy.maxResponseHeaderBytes,
      connect: { lookup: (hostname: string, options: { all?: boolean }, callback: LookupCallback) => this.lookup(hostname, options, callback) },
    });
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => undefined);
  }

  /** One guest fetch; `request` is what the guest sent (hostile), `cancel` ends it early. */
  async fetch(request: unknown, cancel?: AbortSignal): Promise<Outcome> {
    const timeout = AbortSignal.timeout(this.policy.timeoutMs);
    const signal = cancel ? eitherSignal(cancel, timeout) : timeout;
    try {
      return { kind: CompletionKind.Value, json: JSON.stringify(await this.run(request, signal)) };
    } catch (e) {
      if (e instanceof FetchDenied) return { kind: CompletionKind.TypeError, message: `fetch refused: ${e.message}` };
      if (timeout.aborted) return { kind: CompletionKind.TypeError, message: `fetch failed: no response within the policy's timeoutMs (${this.policy.timeoutMs} ms)` };
      const denied = causeOf(e);
      if (denied) return { kind: CompletionKind.TypeError, message: `fetch refused: ${denied.message}` };
      return { kind: CompletionKind.TypeError, message: `fetch failed: ${describeFailure(e)}` };
    }
  }

  private async run(request: unknown, signal: AbortSignal) {
    const { url: urlText, method: rawMethod, headers, body } = parseRequest(request);
    const p = this.policy;
    let url = parseUrl(urlText);
    let method = rawMethod.toUpperCase();
    let sendBody = body;
    let sendHeaders = headers;
    let headerBytes = 0;
    for (const [name, value] of headers) {
      if (name.toLowerCase() === 'host') throw new FetchDenied("the 'host' header is set by the host from the URL");
      headerBytes += Buffer.byteLength(name) + Buffer.byteLength(value);
    }
    if (headerBytes > p.maxRequestHeaderBytes) {
      throw new FetchDenied(`request headers of ${headerBytes} bytes exceed the policy's maxRequestHeaderBytes (${p.maxRequestHeaderBytes})`);
    }
    if (body !== undefined && Buffer.byteLength(body) > p.maxRequestBodyBytes) {
      throw new FetchDenied(`a request body of ${Buffer.byteLength(body)} bytes exceeds the policy's maxRequestBodyBytes (${p.maxRequestBodyBytes})`);
    }
    for (let hop = 0; ; hop++) {
      this.check(url, method);
      const response = await undiciFetch(url, { method, headers: sendHeaders, body: sendBody, redirect: 'manual', signal, dispatcher: this.agent });
      const location = response.headers.get('location');
      if (REDIRECTS.has(response.status) && location !== null) {
        await response.body?.cancel().catch(() => undefined);
        if (hop >= p.maxRedirects) throw new FetchDenied(`more than the policy's maxRedirects (${p.maxRedirects}) redirects`);
        const next = parseUrl(location, url);
        if (response.status === 303 || ((response.status === 301 || response.status === 302) && method === 'POST')) {
          method = method === 'HEAD' ? 'HEAD' : 'GET';
          sendBody = undefined;
        }
        // As browsers do: credentials never follow a redirect to another origin.
        if (next.origin !== url.origin) sendHeaders = sendHeaders.filter(([n]) => !['authorization', 'cookie', 'proxy-authorization'].includes(n.toLowerCase()));
        url = next;
        continue;
      }
      // A HEAD response has no body: its content-length is the GET's, not bytes to read.
      const bytes = method === 'HEAD' ? Buffer.alloc(0) : await readLimited(response, p.maxResponseBodyBytes);
      return {
        status: response.status,
        statusText: response.statusText,
        url: url.href,
        redirected: hop > 0,
        headers: [...response.headers],
        body: bytes.toString('base64'),
      };
    }
  }

  /** The allow-list rules a hop must pass before any connection. */
  private check(url: URL, method: string): void {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new FetchDenied(`${url.protocol} URLs are not fetchable (only http and https)`);
    if (!this.policy.origins.has(url.origin)) throw new FetchDenied(`origin ${url.origin} is not in the policy's origins`);
    if (!this.policy.methods.has(method)) throw new FetchDenied(`method ${method} is not in the policy's methods (${[...this.policy.methods].join(', ')})`);
    if (url.username || url.password) throw new FetchDenied('URLs with credentials are not fetchable');
    // A literal address is connected to without any lookup: check it here.
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    if (isIP(host)) {
      const refusal = addressRefusal(host, this.policy);
      if (refusal) throw new FetchDenied(refusal);
    }
  }

  /** The Agent's only name resolution: the addresses it returns are checked, and the socket connects to them. */
  private lookup(hostname: string, options: { all?: boolean }, callback: LookupCallback): void {
    dnsLookup(hostname, { all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      const allowed = addresses.filter((a) => addressRefusal(a.address, this.policy) === undefined);
      if (allowed.length === 0) {
        const refusal = addresses.length ? addressRefusal(addresses[0].address, this.policy)! : 'no address';
        return callback(Object.assign(new FetchDenied(`${hostname}: ${refusal}`), { code: 'EAIRLOCKDENIED' }), []);
      }
      if (options.all) callback(null, allowed);
      else callback(null, allowed[0].address, allowed[0].family);
    });
  }
}

function parseRequest(request: unknown): { url: string; method: string; headers: [string, string][]; body: string | Uint8Array | undefined } {
  const r = request as { url?: unknown; method?: unknown; headers?: unknown; body?: unknown; bodyBase64?: unknown } | null;
  if (r === null || typeof r !== 'object' || typeof r.url !== 'string' || typeof r.method !== 'string' || !Array.isArray(r.headers)) {
    throw new FetchDenied('malformed request');
  }
  const headers: [string, string][] = [];
  for (const h of r.headers as unknown[]) {
    if (!Array.isArray(h) || h.length !== 2 || typeof h[0] !== 'string' || typeof h[1] !== 'string') throw new FetchDenied('malformed request headers');
    headers.push([h[0], h[1]]);
  }
  if (r.body !== undefined && typeof r.body !== 'string') throw new FetchDenied('malformed request body');
  if (r.bodyBase64 !== undefined) {
    // A binary body (ArrayBuffer, typed array, DataView) crosses as base64, as response bodies do.
    if (r.body !== undefined || typeof r.bodyBase64 !== 'string' || !BASE64.test(r.bodyBase64)) throw new FetchDenied('malformed request body');
    return { url: r.url, method: r.method, headers, body: Buffer.from(r.bodyBase64, 'base64') };
  }
  return { url: r.url, method: r.method, headers, body: r.body };
}

function parseUrl(text: string, base?: URL): URL {
  try {
    return new URL(text, base);
  } catch {
    throw new FetchDenied(`'${text.slice(0, 200)}' is not a valid URL`);
  }
}

async function readLimited(response: Response | Awaited<ReturnType<typeof undiciFetch>>, limit: number): Promise<Buffer> {
  const declared = Number(response.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel().catch(() => undefined);
    throw new FetchDenied(`the response body of ${declared} bytes exceeds the policy's maxResponseBodyBytes (${limit})`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  if (!response.body) return Buffer.alloc(0);
  for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
    size += chunk.byteLength;
    if (size > limit) throw new FetchDenied(`the response body exceeds the policy's maxResponseBodyBytes (${limit})`);
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks, size);
}

/** Our refusal from inside undici (the lookup), however deep it was wrapped. */
function causeOf(e: unknown): FetchDenied | undefined {
  for (let c = e as { cause?: unknown } | undefined, depth = 0; c && depth < 8; c = c.cause as typeof c, depth++) {
    if (c instanceof FetchDenied) return c;
  }
  return undefined;
}

function describeFailure(e: unknown): string {
  const parts: string[] = [];
  for (let c = e as { message?: unknown; cause?: unknown } | undefined, depth = 0; c && depth < 4; c = c.cause as typeof c, depth++) {
    if (typeof c.message === 'string' && c.message) parts.push(c.message);
  }
  return parts.join(': ') || String(e);
}

/** AbortSignal.any, which Node 20 gained only in 20.3. */
function eitherSignal(a: AbortSignal, b: AbortSignal): AbortSignal {
  const any = (AbortSignal as { any?: (signals: AbortSignal[]) => AbortSignal }).any;
  if (typeof any === 'function') return any.call(AbortSignal, [a, b]);
  const both = new AbortController();
  for (const s of [a, b]) {
    if (s.aborted) both.abort(s.reason);
    else s.addEventListener('abort', () => both.abort(s.reason), { once: true });
  }
  return both.signal;
}
