// harden.js — the hardened profile's JavaScript half, evaluated once in a fresh context by
// webapi.c before any user code: turns off code generation from strings (eval, Function and
// its async/generator siblings), puts the given clock behind Date, and freezes every
// intrinsic reachable from the global object. Returns { harden } for later lazy globals.

// URL's dependencies read it when they load, after the intrinsics are frozen.
import './array-buffer-resizable.js';

const codegenOff = (what) => {
  throw new EvalError(`${what} is disabled by the hardened profile`);
};

function disableCodeGeneration() {
  const ctors = [
    Function,
    Object.getPrototypeOf(async function () {}).constructor,
    Object.getPrototypeOf(function* () {}).constructor,
    Object.getPrototypeOf(async function* () {}).constructor,
  ];
  for (const Real of ctors) {
    const name = Real.name;
    const Disabled = function () {
      codegenOff(name);
    };
    Object.defineProperty(Disabled, 'name', { value: name });
    // instanceof keeps working: it reads Disabled.prototype, which is the real one.
    Object.defineProperty(Disabled, 'prototype', { value: Real.prototype, writable: false });
    Object.defineProperty(Real.prototype, 'constructor', { value: Disabled, writable: true, configurable: true });
    if (Real === Function) Object.defineProperty(globalThis, 'Function', { value: Disabled, writable: true, configurable: true });
  }
  const evalOff = function eval() {
    codegenOff('eval');
  };
  Object.defineProperty(globalThis, 'eval', { value: evalOff, writable: true, configurable: true });
}

function replaceDateClock(now) {
  const RealDate = globalThis.Date;
  const Date = function Date(...args) {
    if (!new.target) return new RealDate(now()).toString();
    return Reflect.construct(RealDate, args.length === 0 ? [now()] : args, new.target);
  };
  Object.defineProperty(Date, 'prototype', { value: RealDate.prototype, writable: false });
  Object.defineProperty(RealDate.prototype, 'constructor', { value: Date, writable: true, configurable: true });
  for (const key of ['parse', 'UTC']) Object.defineProperty(Date, key, { value: RealDate[key], writable: true, configurable: true });
  Object.defineProperty(Date, 'now', { value: now, writable: true, configurable: true });
  Object.defineProperty(globalThis, 'Date', { value: Date, writable: true, configurable: true });
}

// A frozen prototype's data property cannot be shadowed by assignment on an object that
// inherits it ("the override mistake"): `this.name = 'MyError'` in an Error subclass
// would throw. These commonly assigned ones become accessors whose setter defines an own
// property on the receiver instead.
const OVERRIDABLE = new Set(['constructor', 'name', 'message', 'toString', 'valueOf', 'toLocaleString', 'toJSON', 'stack']);

function makeOverridable(obj) {
  for (const key of Reflect.ownKeys(obj)) {
    if (!OVERRIDABLE.has(key)) continue;
    const d = Object.getOwnPropertyDescriptor(obj, key);
    if (!d || !('value' in d) || !d.writable || !d.configurable) continue;
    const value = d.value;
    Object.defineProperty(obj, key, {
      get() {
        return value;
      },
      set(v) {
        if (this === obj) throw new TypeError(`Cannot assign to read only property '${String(key)}' of a frozen intrinsic`);
        Object.defineProperty(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: d.enumerable,
      configurable: false,
    });
  }
}

// Everything frozen so far, shared by every walk: lockdown's per-global walks and later lazy
// groups all reach the same prototypes, which are walked once.
const seen = new WeakSet();

function harden(root) {
  const stack = [root];
  while (stack.length) {
    const v = stack.pop();
    if ((typeof v !== 'object' && typeof v !== 'function') || v === null || seen.has(v) || v === globalThis) continue;
    seen.add(v);
    if (typeof v === 'object' && Object.prototype.hasOwnProperty.call(v, 'constructor') && typeof v.constructor === 'function') makeOverridable(v);
    Object.freeze(v);
    stack.push(Object.getPrototypeOf(v));
    for (const key of Reflect.ownKeys(v)) {
      const d = Object.getOwnPropertyDescriptor(v, key);
      if ('value' in d) stack.push(d.value);
      else stack.push(d.get, d.set);
    }
  }
  return root;
}

function lockdown(now) {
  disableCodeGeneration();
  if (now) replaceDateClock(now);
  // Intrinsics no global names directly, reached through instances' prototypes.
  const hidden = [
    async function () {},
    function* () {},
    async function* () {},
    [].values(),
    new Map().entries(),
    new Set().values(),
    ''[Symbol.iterator](),
    /a/[Symbol.matchAll](''),
    Object.getPrototypeOf(Int8Array),
    Promise.resolve(),
  ];
  for (const v of hidden) harden(v);
  for (const key of Reflect.ownKeys(globalThis)) {
    const d = Object.getOwnPropertyDescriptor(globalThis, key);
    if ('value' in d) harden(d.value);
    else harden(d.get), harden(d.set);
    // The bindings themselves stay put; globalThis stays open for the handler's own globals.
    Object.defineProperty(globalThis, key, 'value' in d ? { writable: false, configurable: false } : { configurable: false });
  }
  return { harden };
}

export { lockdown };
