// calculator.ts — JSON event processing: one handler routes several operations and
// reports bad input as an error value, while a thrown error reaches the host as a
// coded exception and the sandbox keeps working.
// Run: npx tsx examples/calculator.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().build();
  const sandbox = await proto.loadRuntime();

  sandbox.addHandler(
    'calculate',
    `
    const ops = {
      add: (a, b) => a + b,
      subtract: (a, b) => a - b,
      multiply: (a, b) => a * b,
      divide: (a, b) => {
        if (b === 0) throw new RangeError('division by zero');
        return a / b;
      },
      power: (a, b) => a ** b,
    };

    let calls = 0;

    function handler(event) {
      calls++;
      const op = ops[event.operation];
      if (!op) return { error: 'unknown operation: ' + event.operation, calls };
      return { operation: event.operation, a: event.a, b: event.b, result: op(event.a, event.b), calls };
    }
  `,
  );

  const loaded = await sandbox.getLoadedSandbox();

  const requests = [
    { operation: 'add', a: 10, b: 5 },
    { operation: 'subtract', a: 10, b: 5 },
    { operation: 'multiply', a: 10, b: 5 },
    { operation: 'divide', a: 10, b: 4 },
    { operation: 'power', a: 2, b: 10 },
    { operation: 'modulo', a: 10, b: 3 },
  ];

  for (const request of requests) {
    console.log(JSON.stringify(await loaded.callHandler('calculate', request)));
  }

  try {
    await loaded.callHandler('calculate', { operation: 'divide', a: 1, b: 0 });
  } catch (error) {
    const e = error as Error & { code?: string };
    console.log(`rejected as expected: [${e.code}] ${e.name}: ${e.message}`);
  }

  console.log(JSON.stringify(await loaded.callHandler('calculate', { operation: 'add', a: 1, b: 1 })));
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
