// multi-tenant.ts — an HTTP server that runs each tenant's own handler in sandboxes of
// its own: a SandboxPool clones them from a per-tenant snapshot, gives each tenant host
// functions over its own key-value store, its own time limits, a bounded queue (429 past
// it), and rolls a sandbox back to the snapshot after a call that had to be stopped.
// Run: npx tsx examples/multi-tenant.ts   (PORT=8080 to choose the port)
// Then: curl -d '{"values":[1,2,3]}' http://127.0.0.1:8080/globex
//       curl http://127.0.0.1:8080/metrics
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { AirlockError, HostFunctionModule, SandboxBuilder, SandboxPool, registerPoolMetrics, type Snapshot } from 'airlock-vm';
import { Registry } from 'prom-client';

/** Each tenant's code and limits, as a platform would load them from its database. */
const tenants: Record<string, { source: string; limits: { wallClockTimeoutMs: number; cpuTimeoutMs: number } }> = {
  acme: {
    // State that must survive rollbacks lives on the host, behind host functions.
    source: `
      import * as kv from "host:kv";
      function handler(event) {
        const hits = (kv.get("hits") ?? 0) + 1;
        kv.set("hits", hits);
        return { tenant: "acme", hits, echo: event };
      }`,
    limits: { wallClockTimeoutMs: 1000, cpuTimeoutMs: 500 },
  },
  globex: {
    // State in the guest lasts until the sandbox is rolled back.
    source: `
      let calls = 0;
      function handler(event) {
        if (event.loop) for (;;) {}
        calls++;
        console.log("globex call " + calls);
        return { tenant: "globex", calls, sum: (event.values ?? []).reduce((a, b) => a + b, 0) };
      }`,
    limits: { wallClockTimeoutMs: 200, cpuTimeoutMs: 100 },
  },
};

/** The host side of each tenant's key-value store. */
const stores = new Map<string, Map<string, unknown>>();
function kvModules(tenant: string): HostFunctionModule[] {
  let store = stores.get(tenant);
  if (!store) stores.set(tenant, (store = new Map()));
  const kv = new HostFunctionModule('kv');
  kv.register('get', (key: string) => store.get(key) ?? null);
  kv.register('set', (key: string, value: unknown) => {
    store.set(key, value);
    return true;
  });
  return [kv];
}

/** A tenant's template: its handler loaded once, snapshotted, then only cloned. */
async function templateFor(tenant: string): Promise<Snapshot> {
  const proto = await new SandboxBuilder()
    .setHeapSize(16 * 1024 * 1024)
    .setHostFunctionModules(() => kvModules(tenant))
    .build();
  const js = await proto.loadRuntime();
  js.addHandler('main', tenants[tenant].source);
  const loaded = await js.getLoadedSandbox();
  const snapshot = await loaded.snapshot();
  await loaded.dispose();
  return snapshot;
}

const pool = new SandboxPool({
  snapshot: templateFor,
  hostFunctionModules: kvModules,
  hostFunctionFilter: 'snapshotRequirements',
  maxConcurrencyPerTenant: 2,
  maxQueuePerTenant: 16,
  maxResident: 100,
  idleTimeoutMs: 60_000,
  console: (e) => console.log(`[${e.tenant} #${e.callId}] ${e.level}: ${e.message}`),
});
pool.on('restore', (e: { tenant: string }) => console.log(`[${e.tenant}] sandbox rolled back to its snapshot`));

const registry = new Registry();
registerPoolMetrics(pool, { registry });

const STATUS: Record<string, number> = { ERR_OVERLOADED: 429, ERR_CANCELLED: 504, ERR_INVALID_ARG: 400, ERR_GUEST_EXCEPTION: 422 };

function send(res: ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  res.writeHead(status, { 'content-type': type });
  res.end(type === 'application/json' ? JSON.stringify(body) : String(body));
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let text = '';
  for await (const chunk of req) {
    text += chunk;
    if (text.length > 64 * 1024) throw new Error('request body too large');
  }
  return text ? JSON.parse(text) : {};
}

async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://localhost').pathname;
  if (req.method === 'GET' && path === '/metrics') return send(res, 200, await registry.metrics(), registry.contentType);
  if (req.method === 'GET' && path === '/stats') return send(res, 200, pool.stats());
  const tenant = path.slice(1);
  if (req.method !== 'POST' || !Object.hasOwn(tenants, tenant)) return send(res, 404, { error: 'POST /<tenant> with a JSON body' });
  let event: unknown;
  try {
    event = await readJson(req);
  } catch (e) {
    return send(res, 400, { error: (e as Error).message });
  }
  try {
    send(res, 200, await pool.call(tenant, 'main', event, tenants[tenant].limits));
  } catch (e) {
    if (!(e instanceof AirlockError)) throw e;
    send(res, STATUS[e.code] ?? 500, { error: e.code, message: e.message });
  }
}

const server = createServer((req, res) => {
  route(req, res).catch((e: unknown) => send(res, 500, { error: String(e) }));
});

server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  console.log(`listening on http://127.0.0.1:${port}`);
});

async function shutdown(): Promise<void> {
  server.close();
  await pool.close();
  console.log('closed');
}
process.once('SIGINT', () => void shutdown());
process.once('SIGTERM', () => void shutdown());
