// native-vm.test.ts — the VMM addon against hand-assembled guests: header checks,
// boot, exchanges, host calls, protocol violations, kill and monitors,
// snapshot/restore, resource hygiene and probe().
import { readdirSync } from 'node:fs';
import { afterEach, expect, it, vi } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import {
  buildImage,
  decodeMessages,
  defaultConfig,
  encodeMessage,
  loadAddon,
  programs,
  rejection,
  type NativeVm,
  type VmConfig,
} from './raw-guest.js';

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

type OnHostCall = (out: Buffer, callId: number) => void;

function newVm(code: Buffer, onHostCall: OnHostCall = () => {}, config: VmConfig = defaultConfig): NativeVm {
  const vm = new (loadAddon().Vm)(buildImage(code), config, onHostCall);
  live.push(vm);
  return vm;
}

async function booted(code: Buffer, onHostCall?: OnHostCall, config?: VmConfig): Promise<NativeVm> {
  const vm = newVm(code, onHostCall, config);
  await vm.boot();
  return vm;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeKvm('host addon: image header validation', () => {
  const make = (overrides: Parameters<typeof buildImage>[1]) => () =>
    new (loadAddon().Vm)(buildImage(programs.echo, overrides), defaultConfig, () => {});

  it('rejects a bad magic', () => {
    expect(make({ magic: 0x12345678 })).toThrow(/bad magic 0x12345678/);
  });

  it('names both versions on an ABI mismatch', () => {
    const theirs = abi.AIRLOCK_ABI_VERSION + 1;
    let err: (Error & { code?: string }) | undefined;
    try {
      make({ abiVersion: theirs })();
    } catch (e) {
      err = e as Error & { code?: string };
    }
    expect(err?.code).toBe('ERR_INVALID_ARG');
    expect(err?.message).toContain(`ABI version ${theirs}`);
    expect(err?.message).toContain(`ABI version ${abi.AIRLOCK_ABI_VERSION}`);
  });

  it('rejects a wrong load address, file size, and ranges outside the image', () => {
    expect(make({ loadAddr: 0x400000n })).toThrow(/load_addr/);
    expect(make({ fileEnd: 0x300000n })).toThrow(/file_end/);
    expect(make({ entry: 0x400000n })).toThrow(/entry 0x400000 is outside the text/);
    expect(make({ entry: 0x200000n })).toThrow(/entry/);
    expect(make({ bssEnd: 0x201800n })).toThrow(/bss_end/);
    expect(make({ dataStart: 0x200800n })).toThrow(/data_start/);
    expect(make({ control: 0x203000n })).toThrow(/control/);
    expect(make({ control: 0x200000n })).toThrow(/control/);
    expect(make({ tlsBlock: 0x200100n })).toThrow(/tls_block/);
  });

  it('rejects a truncated image and unusable sizes', () => {
    const Vm = loadAddon().Vm;
    expect(() => new Vm(Buffer.alloc(10), defaultConfig, () => {})).toThrow(/smaller than the 64-byte header/);
    expect(() => new Vm(buildImage(programs.echo), { ...defaultConfig, inputSize: 0 }, () => {})).toThrow(/inputSize/);
    expect(() => new Vm(buildImage(programs.echo), { ...defaultConfig, heapSize: 2 ** 40 }, () => {})).toThrow();
    expect(() => new Vm(buildImage(programs.echo), { ...defaultConfig, outputSize: -1 }, () => {})).toThrow(
      /outputSize/,
    );
  });
});

describeKvm('host addon: exchanges', () => {
  it('boots and echoes requests through guest memory', async () => {
    const vm = newVm(programs.echo);
    const ready = await vm.boot();
    expect(ready.length).toBe(0);
    const req = encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['handler', '{"a":1}']);
    const r = await vm.send(req);
    expect(r.output.equals(req)).toBe(true);
    expect(r.wallTimeNs).toBeGreaterThan(0);
    expect(r.cpuTimeNs).toBeGreaterThan(0);
    const big = Buffer.alloc(defaultConfig.inputSize, 7);
    expect((await vm.send(big)).output.equals(big)).toBe(true);
  });

  it('rejects requests larger than the input buffer, and a second concurrent exchange', async () => {
    // The guest waits in a host call until the test answers, so the first exchange
    // is certainly still running when the second arrives.
    let hostCalled!: () => void;
    const hostCall = new Promise<void>((resolve) => (hostCalled = resolve));
    const vm = await booted(programs.hostCall, () => hostCalled());
    const tooBig = await rejection(vm.send(Buffer.alloc(defaultConfig.inputSize + 1)));
    expect(tooBig.code).toBe('ERR_INVALID_ARG');
    const first = vm.send(Buffer.from('a'));
    const second = await rejection(vm.send(Buffer.from('b')));
    expect(second.code).toBe('ERR_BUSY');
    expect((await rejection(vm.snapshot())).code).toBe('ERR_BUSY');
    await hostCall;
    vm.hostReturn(Buffer.from('answer'));
    expect((await first).output.toString()).toBe('answer');
  });

  it('rejects send before boot and a second boot', async () => {
    const vm = newVm(programs.echo);
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_INVALID_ARG');
    await vm.boot();
    expect((await rejection(vm.boot())).code).toBe('ERR_INVALID_ARG');
  });

  it('validates send options', async () => {
    const vm = await booted(programs.echo);
    expect((await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: -1 }))).code).toBe('ERR_INVALID_ARG');
    expect((await rejection(vm.send(Buffer.from('x'), { cpuTimeoutMs: Number.NaN }))).code).toBe('ERR_INVALID_ARG');
    expect((await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 5000, cpuTimeoutMs: 5000 })).output.toString()).toBe(
      'x',
    );
  });
});

describeKvm('host addon: host calls', () => {
  it('hands the output to onHostCall and resumes with the reply (sync and async)', async () => {
    let vm!: NativeVm;
    const seen: string[] = [];
    let asyncReply = false;
    vm = await booted(programs.hostCall, (out) => {
      seen.push(out.toString());
      const reply = Buffer.from(`reply-to-${out.toString()}`);
      if (asyncReply) setTimeout(() => vm.hostReturn(reply), 20);
      else vm.hostReturn(reply);
    });
    expect((await vm.send(Buffer.from('one'))).output.toString()).toBe('reply-to-one');
    asyncReply = true;
    const r = await vm.send(Buffer.from('two'));
    expect(r.output.toString()).toBe('reply-to-two');
    expect(seen).toEqual(['one', 'two']);
    // The 20 ms wait for the host function is wall time, not guest CPU time.
    expect(r.wallTimeNs).toBeGreaterThan(15e6);
    expect(r.cpuTimeNs).toBeLessThan(r.wallTimeNs);
  });

  it('answers the guest with HOST_ERROR when the reply exceeds the input buffer', async () => {
    const config = { ...defaultConfig, inputSize: 4096 };
    let vm!: NativeVm;
    vm = await booted(programs.hostCall, () => vm.hostReturn(Buffer.alloc(5000, 1)), config);
    const [msg] = decodeMessages((await vm.send(Buffer.from('x'))).output);
    expect(msg.kind).toBe(abi.AIRLOCK_MSG_HOST_RETURN);
    expect(msg.status).toBe(abi.AIRLOCK_STATUS_HOST_ERROR);
    expect(msg.fields[0].toString()).toMatch(/5000 bytes exceeds the guest input buffer of 4096 bytes/);
  });

  it('answers the guest with HOST_ERROR when onHostCall throws synchronously', async () => {
    const vm = await booted(programs.hostCall, () => {
      throw new Error('callback exploded');
    });
    const [msg] = decodeMessages((await vm.send(Buffer.from('x'))).output);
    expect(msg.kind).toBe(abi.AIRLOCK_MSG_HOST_RETURN);
    expect(msg.status).toBe(abi.AIRLOCK_STATUS_HOST_ERROR);
    expect(msg.fields[0].toString()).toContain('callback exploded');
  });

  it('ignores a late hostReturn after the exchange was cancelled', async () => {
    let vm!: NativeVm;
    let calls = 0;
    vm = await booted(programs.hostCall, () => {
      calls++;
    });
    const snap = await vm.snapshot();
    const p = vm.send(Buffer.from('x'), { wallClockTimeoutMs: 30 });
    const err = await rejection(p);
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('wall-clock');
    expect(() => vm.hostReturn(Buffer.from('late'))).not.toThrow();
    await vm.restore(snap);
    // The next exchange's host call is not answered by the stale reply.
    const next = vm.send(Buffer.from('y'));
    await vi.waitFor(() => expect(calls).toBe(2));
    vm.hostReturn(Buffer.from('fresh'));
    expect((await next).output.toString()).toBe('fresh');
  });

  it('drops an answer carrying the id of an older host call', async () => {
    let vm!: NativeVm;
    const ids: number[] = [];
    vm = await booted(programs.hostCall, (_out, id) => {
      ids.push(id);
    });
    const snap = await vm.snapshot();
    expect((await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 20 }))).code).toBe('ERR_CANCELLED');
    await vm.restore(snap);
    const next = vm.send(Buffer.from('y'));
    await vi.waitFor(() => expect(ids.length).toBe(2));
    expect(ids[1]).not.toBe(ids[0]);
    vm.hostReturn(Buffer.from('stale'), ids[0]); // the cancelled call's answer arrives late
    vm.hostReturn(Buffer.from('current'), ids[1]);
    expect((await next).output.toString()).toBe('current');
  });
});

describeKvm('host addon: guests that break the protocol', () => {
  const cases: [string, Buffer, RegExp][] = [
    ['an out to another port', programs.badPort, /port I\/O \(out to port 0x80, 1 byte\(s\)\) at RIP 0x2/],
    ['hlt at CPL 3', programs.hlt, /shutdown .* at RIP 0x2/],
    ['a triple fault (ud2, no IDT)', programs.ud2, /shutdown .* at RIP 0x2/],
    ['a response_len beyond the output buffer', programs.hugeResponse, /response_len 4294967295 exceeds/],
  ];
  for (const [what, code, message] of cases) {
    it(`turns ${what} into ERR_GUEST_ABORT and stays restorable`, async () => {
      const vm = await booted(code);
      const snap = await vm.snapshot();
      const err = await rejection(vm.send(Buffer.from('x')));
      expect(err.code).toBe('ERR_GUEST_ABORT');
      expect(err.message).toMatch(message);
      expect(typeof err.wallTimeNs).toBe('number');
      const again = await rejection(vm.send(Buffer.from('x')));
      expect(again.code).toBe('ERR_POISONED');
      await vm.restore(snap);
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_GUEST_ABORT');
    });
  }

  it('reports the guest abort message when it is well-formed text', async () => {
    const vm = await booted(programs.abort);
    const err = await rejection(vm.send(encodeMessage(abi.AIRLOCK_MSG_ABORT, 0, ['out of luck'])));
    expect(err.code).toBe('ERR_GUEST_ABORT');
    expect(err.message).toBe('guest aborted: out of luck');
  });

  it('does not echo a malformed or binary abort message', async () => {
    const vm = await booted(programs.abort);
    const bad = encodeMessage(abi.AIRLOCK_MSG_ABORT, 0, ['abc']);
    bad.writeUInt32LE(1000, 16); // field length beyond the message
    expect((await rejection(vm.send(bad))).message).toBe('guest aborted (no readable abort message)');
    const vm2 = await booted(programs.abort);
    const binary = encodeMessage(abi.AIRLOCK_MSG_ABORT, 0, [Buffer.from([0x1b, 0x5b, 0x32, 0x4a])]);
    expect((await rejection(vm2.send(binary))).message).toBe('guest aborted (no readable abort message)');
  });
});

describeKvm('host addon: kill and monitors', () => {
  it('kills a spinning guest and reports stats', async () => {
    const vm = await booted(programs.spin);
    const p = vm.send(Buffer.from('x'));
    await sleep(30);
    vm.kill();
    const err = await rejection(p);
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('kill');
    expect(err.wallTimeNs as number).toBeGreaterThan(20e6);
    expect(err.cpuTimeNs as number).toBeGreaterThan(0);
  });

  it('fires the CPU-time monitor first for a spinning guest', async () => {
    const vm = await booted(programs.spin);
    const err = await rejection(vm.send(Buffer.from('x'), { cpuTimeoutMs: 40, wallClockTimeoutMs: 5000 }));
    expect(err.code).toBe('ERR_CANCELLED');
    expect(err.terminatedBy).toBe('cpu-time');
    expect(err.cpuTimeNs as number).toBeGreaterThanOrEqual(35e6);
  });

  it('fires the wall-clock monitor when it is shorter', async () => {
    const vm = await booted(programs.spin);
    const err = await rejection(vm.send(Buffer.from('x'), { cpuTimeoutMs: 5000, wallClockTimeoutMs: 40 }));
    expect(err.terminatedBy).toBe('wall-clock');
    expect(err.wallTimeNs as number).toBeGreaterThanOrEqual(40e6);
  });

  it('cancels while the guest waits in a host call (kill and wall clock)', async () => {
    const vm = await booted(programs.hostCall, () => {});
    const snap = await vm.snapshot();
    const p = vm.send(Buffer.from('x'));
    await sleep(20);
    vm.kill();
    expect((await rejection(p)).terminatedBy).toBe('kill');
    await vm.restore(snap);
    const q = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 25 }));
    expect(q.terminatedBy).toBe('wall-clock');
  });

  it('does not count host-call time against the CPU monitor', async () => {
    let vm!: NativeVm;
    vm = await booted(programs.hostCall, () => setTimeout(() => vm.hostReturn(Buffer.from('late but fine')), 120));
    const r = await vm.send(Buffer.from('x'), { cpuTimeoutMs: 30 });
    expect(r.output.toString()).toBe('late but fine');
    expect(r.cpuTimeNs).toBeLessThan(30e6);
    expect(r.wallTimeNs).toBeGreaterThan(100e6);
  });

  it('treats kill with no exchange running as a no-op', async () => {
    const vm = await booted(programs.echo);
    vm.kill();
    vm.kill();
    expect((await vm.send(Buffer.from('still fine'))).output.toString()).toBe('still fine');
  });

  it('kills a guest spinning at boot', async () => {
    const vm = newVm(Buffer.from('ebfe', 'hex'));
    const p = vm.boot();
    await sleep(20);
    vm.kill();
    expect((await rejection(p)).terminatedBy).toBe('kill');
  });

  it('leaves no usable guest when the boot is killed', async () => {
    // A guest that never finishes booting: the kill lands during the VM's set-up or
    // its first run, and the boot must end cancelled either way. (With a guest that
    // boots at once, a main thread descheduled between the two calls let the boot
    // finish first on a loaded host.)
    const vm = newVm(Buffer.from('ebfe', 'hex'));
    const p = vm.boot();
    vm.kill();
    const err = await rejection(p);
    expect(err.code).toBe('ERR_CANCELLED');
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
  });

  it('leaves the VM poisoned after a cancel until a restore', async () => {
    const vm = await booted(programs.spin);
    const snap = await vm.snapshot();
    await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 10 }));
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    expect((await rejection(vm.snapshot())).code).toBe('ERR_POISONED');
    await vm.restore(snap);
    expect((await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 10 }))).terminatedBy).toBe('wall-clock');
  });
});

describeKvm('host addon: snapshot and restore', () => {
  const counters = (out: Buffer) => [out.readBigUInt64LE(0), out.readBigUInt64LE(8)];

  it('rolls heap, data and registers back', async () => {
    const vm = await booted(programs.counter);
    expect(counters((await vm.send(Buffer.alloc(0))).output)).toEqual([1n, 1n]);
    const snap = await vm.snapshot();
    expect(counters((await vm.send(Buffer.alloc(0))).output)).toEqual([2n, 2n]);
    expect(counters((await vm.send(Buffer.alloc(0))).output)).toEqual([3n, 3n]);
    await vm.restore(snap);
    expect(counters((await vm.send(Buffer.alloc(0))).output)).toEqual([2n, 2n]);
    await vm.restore(snap);
    await vm.restore(snap);
    expect(counters((await vm.send(Buffer.alloc(0))).output)).toEqual([2n, 2n]);
  });

  it('refuses a snapshot of another VM and things that are not snapshots', async () => {
    const a = await booted(programs.counter);
    const b = await booted(programs.counter);
    const snapA = await a.snapshot();
    expect((await rejection(b.restore(snapA))).code).toBe('ERR_INVALID_ARG');
    expect((await rejection(b.restore({}))).code).toBe('ERR_INVALID_ARG');
    expect((await rejection(b.restore(undefined as unknown as object))).code).toBe('ERR_INVALID_ARG');
    await a.restore(snapA);
  });

  it('restores after a guest abort (triple fault)', async () => {
    const vm = await booted(programs.ud2);
    const snap = await vm.snapshot();
    await rejection(vm.send(Buffer.alloc(0)));
    await vm.restore(snap);
    const err = await rejection(vm.send(Buffer.alloc(0)));
    expect(err.code).toBe('ERR_GUEST_ABORT');
  });
});

describeKvm('host addon: lifetime', () => {
  it('creates and disposes 200 VMs without leaking file descriptors', async () => {
    const fds = () => readdirSync('/proc/self/fd').length;
    const Vm = loadAddon().Vm;
    const warm = new Vm(buildImage(programs.echo), defaultConfig, () => {});
    await warm.boot();
    await warm.dispose();
    const before = fds();
    for (let i = 0; i < 200; i++) {
      const vm = new Vm(buildImage(programs.echo), defaultConfig, () => {});
      await vm.boot();
      if (i % 2 === 0) await vm.send(Buffer.from('x'));
      await vm.dispose();
    }
    expect(fds()).toBeLessThanOrEqual(before);
  }, 60_000);

  it('makes dispose idempotent and cancels a running exchange', async () => {
    const vm = newVm(programs.spin);
    await vm.boot();
    const p = vm.send(Buffer.from('x'));
    await sleep(10);
    const d1 = vm.dispose();
    const d2 = vm.dispose();
    const err = await rejection(p);
    expect(err.code).toBe('ERR_CANCELLED');
    await Promise.all([d1, d2]);
    await vm.dispose();
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_INVALID_ARG');
    expect(() => vm.kill()).not.toThrow();
  });

  it('disposes a VM that never booted', async () => {
    const vm = newVm(programs.echo);
    await vm.dispose();
  });
});

describeKvm('host addon: probe and measurement', () => {
  it('reports KVM usable here with no reasons', () => {
    const r = loadAddon().probe();
    expect(r).toEqual({ usable: true, reasons: [] });
    expect(loadAddon().abiVersion).toBe(abi.AIRLOCK_ABI_VERSION);
  });

  it('measures the raw exit round trip', async () => {
    const samples = await loadAddon().measureExitFloor(200);
    expect(samples.length).toBe(200);
    for (const s of samples) expect(s).toBeGreaterThan(0);
  });
});
