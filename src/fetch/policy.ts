// policy.ts — the fetch capability an embedder grants a sandbox: its allow-list and
// limits as given to SandboxBuilder.setFetchPolicy(), checked and completed with
// defaults once, and the address rules (loopback, private, link-local, metadata).
import { BlockList, isIP } from 'node:net';
import { InvalidArgumentError } from '../errors.js';

/** What a sandbox may fetch. Only `origins` is required; everything else has a default. */
export interface FetchPolicy {
  /** Origins the guest may reach, e.g. 'https://api.example.com' or 'http://127.0.0.1:8080'. Redirects are checked against the same list. */
  origins: readonly string[];
  /** Request methods allowed (default GET and HEAD). */
  methods?: readonly string[];
  /** Bytes of request header names and values together (default 16 KiB). */
  maxRequestHeaderBytes?: number;
  /** Bytes of a request body (default 1 MiB). */
  maxRequestBodyBytes?: number;
  /** Bytes of a response's headers (default 16 KiB). */
  maxResponseHeaderBytes?: number;
  /** Bytes of a response body (default 1 MiB; the body also has to fit the input buffer, as base64). */
  maxResponseBodyBytes?: number;
  /** Milliseconds for one fetch, its redirects and its body included (default 10,000). */
  timeoutMs?: number;
  /** Redirects followed before the fetch fails (default 5). */
  maxRedirects?: number;
  /**
   * Addresses or CIDR ranges ('127.0.0.1', '10.0.0.0/8', '::1') the guest may reach
   * although they are loopback, private, link-local or cloud metadata (refused otherwise).
   */
  allowAddresses?: readonly string[];
}

export interface ResolvedFetchPolicy {
  origins: ReadonlySet<string>;
  methods: ReadonlySet<string>;
  maxRequestHeaderBytes: number;
  maxRequestBodyBytes: number;
  maxResponseHeaderBytes: number;
  maxResponseBodyBytes: number;
  timeoutMs: number;
  maxRedirects: number;
  allowAddresses: BlockList;
}

const KiB = 1024;
const MiB = 1024 * KiB;

export const fetchDefaults = {
  methods: ['GET', 'HEAD'],
  maxRequestHeaderBytes: 16 * KiB,
  maxRequestBodyBytes: 1 * MiB,
  maxResponseHeaderBytes: 16 * KiB,
  maxResponseBodyBytes: 1 * MiB,
  timeoutMs: 10_000,
  maxRedirects: 5,
} as const;

const KNOWN_KEYS = new Set([
  'origins',
  'methods',
  'maxRequestHeaderBytes',
  'maxRequestBodyBytes',
  'maxResponseHeaderBytes',
  'maxResponseBodyBytes',
  'timeoutMs',
  'maxRedirects',
  'allowAddresses',
]);

function count(value: unknown, what: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(`fetch policy ${what} must be an integer from ${min} to ${max} (got ${String(value)})`);
  }
  return value;
}

function stringList(value: unknown, what: string): string[] {
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) {
    throw new InvalidArgumentError(`fetch policy ${what} must be an array of strings`);
  }
  return value as string[];
}

/** Checks a policy as the embedder wrote it; every default is filled in. */
export function resolveFetchPolicy(policy: FetchPolicy): ResolvedFetchPolicy {
  if (policy === null || typeof policy !== 'object') throw new InvalidArgumentError('fetch policy must be an object');
  for (const key of Object.keys(policy)) {
    if (!KNOWN_KEYS.has(key)) throw new InvalidArgumentError(`fetch policy has an unknown key '${key}' (known: ${[...KNOWN_KEYS].join(', ')})`);
  }
  const origins = new Set<string>();
  for (const o of stringList(policy.origins, 'origins')) {
    let url: URL;
    try {
      url = new URL(o);
    } catch {
      throw new InvalidArgumentError(`fetch policy origin '${o}' is not a URL`);
    }
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.origin !== o.replace(/\/$/, '')) {
      throw new InvalidArgumentError(`fetch policy origin '${o}' must be an http(s) origin alone, such as 'https://api.example.com' (got a path, credentials or another scheme)`);
    }
    origins.add(url.origin);
  }
  const methods = new Set((policy.methods === undefined ? fetchDefaults.methods : stringList(policy.methods, 'methods')).map((m) => m.toUpperCase()));
  const allowAddresses = new BlockList();
  for (const a of policy.allowAddresses === undefined ? [] : stringList(policy.allowAddresses, 'allowAddresses')) {
    const [address, prefix, ...rest] = a.split('/');
    const family = isIP(address);
    // Digits only: Number('') is 0, and '127.0.0.1/' must not allow every address.
    const bits = prefix === undefined ? undefined : /^[0-9]{1,3}$/.test(prefix) ? Number(prefix) : NaN;
    if (family === 0 || rest.length > 0 || (bits !== undefined && !(Number.isInteger(bits) && bits >= 0 && bits <= (family === 4 ? 32 : 128)))) {
      throw new InvalidArgumentError(`fetch policy allowAddresses entry '${a}' is not an IP address or CIDR range`);
    }
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (bits === undefined) allowAddresses.addAddress(address, type);
    else allowAddresses.addSubnet(address, bits, type);
  }
  return {
    origins,
    methods,
    maxRequestHeaderBytes: count(policy.maxRequestHeaderBytes, 'maxRequestHeaderBytes', fetchDefaults.maxRequestHeaderBytes, 0, 1 * MiB),
    maxRequestBodyBytes: count(policy.maxRequestBodyBytes, 'maxRequestBodyBytes', fetchDefaults.maxRequestBodyBytes, 0, 256 * MiB),
    maxResponseHeaderBytes: count(policy.maxResponseHeaderBytes, 'maxResponseHeaderBytes', fetchDefaults.maxResponseHeaderBytes, 1 * KiB, 1 * MiB),
    maxResponseBodyBytes: count(policy.maxResponseBodyBytes, 'maxResponseBodyBytes', fetchDefaults.maxResponseBodyBytes, 0, 256 * MiB),
    timeoutMs: count(policy.timeoutMs, 'timeoutMs', fetchDefaults.timeoutMs, 1, 3_600_000),
    maxRedirects: count(policy.maxRedirects, 'maxRedirects', fetchDefaults.maxRedirects, 0, 20),
    allowAddresses,
  };
}

/** Ranges a guest never reaches unless allowAddresses names them, with the rule's name. */
const SPECIAL_RANGES: readonly [string, number, 'ipv4' | 'ipv6', string][] = [
  ['0.0.0.0', 8, 'ipv4', 'unspecified'],
  ['10.0.0.0', 8, 'ipv4', 'private'],
  ['100.64.0.0', 10, 'ipv4', 'shared (carrier-grade NAT, cloud metadata)'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['169.254.0.0', 16, 'ipv4', 'link-local (cloud metadata)'],
  ['172.16.0.0', 12, 'ipv4', 'private'],
  ['192.0.0.0', 24, 'ipv4', 'IETF protocol assignments'],
  ['192.168.0.0', 16, 'ipv4', 'private'],
  ['198.18.0.0', 15, 'ipv4', 'benchmarking'],
  ['224.0.0.0', 4, 'ipv4', 'multicast'],
  ['240.0.0.0', 4, 'ipv4', 'reserved'],
  ['::', 128, 'ipv6', 'unspecified'],
  ['::1', 128, 'ipv6', 'loopback'],
  // Deprecated, but a stack with a 6-in-4 tunnel still routes ::a.b.c.d to a.b.c.d.
  ['::', 96, 'ipv6', 'IPv4-compatible'],
  ['::ffff:0:0', 96, 'ipv6', 'IPv4-mapped'],
  ['64:ff9b::', 96, 'ipv6', 'NAT64'],
  ['fc00::', 7, 'ipv6', 'private (unique local, cloud metadata)'],
  ['fe80::', 10, 'ipv6', 'link-local'],
  ['ff00::', 8, 'ipv6', 'multicast'],
];

const specialLists = SPECIAL_RANGES.map(([address, bits, type, name]) => {
  const list = new BlockList();
  list.addSubnet(address, bits, type);
  return { list, type, name };
});

/** Why an address is refused, or undefined when the guest may connect to it. */
export function addressRefusal(address: string, policy: ResolvedFetchPolicy): string | undefined {
  const family = isIP(address);
  if (family === 0) return `'${address}' is not an IP address`;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (policy.allowAddresses.check(address, type)) return undefined;
  for (const s of specialLists) {
    if (s.type === type && s.list.check(address, type)) {
      return `address ${address} is ${s.name} (refused unless the fetch policy's allowAddresses names it)`;
    }
  }
  return undefined;
}
