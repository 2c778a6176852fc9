// quickjs-emscripten.ts — the peer contender: QuickJS compiled by Emscripten (npm
// quickjs-emscripten), called on the Node main thread as its users call it. Each call does
// what an Airlock call does: JSON in, handler call, JSON out.
import { getQuickJS, type QuickJSContext, type QuickJSHandle } from 'quickjs-emscripten';

export interface EmscriptenSandbox {
  call(name: string, event: unknown): unknown;
  dispose(): void;
}

export async function emscriptenContender(handlers: Record<string, string>): Promise<{
  context: EmscriptenSandbox;
  create(handlers: Record<string, string>): EmscriptenSandbox;
}> {
  // Loading the Emscripten module is the equivalent of our compiled-once guest: not timed.
  const quickjs = await getQuickJS();

  function create(sources: Record<string, string>): EmscriptenSandbox {
    const vm: QuickJSContext = quickjs.newContext();
    const owned: QuickJSHandle[] = [];
    const fns = new Map<string, QuickJSHandle>();
    for (const [name, src] of Object.entries(sources)) {
      // Each handler gets its own scope, as each Airlock handler is its own module.
      const fn = vm.unwrapResult(vm.evalCode(`(function () {\n${src}\nreturn handler;\n})()`));
      fns.set(name, fn);
      owned.push(fn);
    }
    const json = vm.getProp(vm.global, 'JSON');
    const parse = vm.getProp(json, 'parse');
    const stringify = vm.getProp(json, 'stringify');
    owned.push(json, parse, stringify);
    return {
      call(name, event) {
        const fn = fns.get(name);
        if (!fn) throw new Error(`no handler ${name}`);
        const text = vm.newString(JSON.stringify(event));
        const arg = vm.unwrapResult(vm.callFunction(parse, vm.undefined, text));
        text.dispose();
        const result = vm.unwrapResult(vm.callFunction(fn, vm.undefined, arg));
        arg.dispose();
        const out = vm.unwrapResult(vm.callFunction(stringify, vm.undefined, result));
        result.dispose();
        const s = vm.getString(out);
        out.dispose();
        return s === undefined ? undefined : JSON.parse(s);
      },
      dispose() {
        for (const h of owned) h.dispose();
        vm.dispose();
      },
    };
  }

  return { context: create(handlers), create };
}
