#!/usr/bin/env node
// main.ts — the `airlock` command: its argument grammar (commander) and the dispatch to
// run, repl and doctor. Each command resolves to its exit code; nothing else exits.
import { Command, CommanderError, Option } from 'commander';
import { doctorCommand } from './doctor.js';
import { collectModule, exitCodes, parseBackend, parsePositiveInteger } from './options.js';
import { replCommand } from './repl.js';
import { runCommand } from './run.js';

// The name and version printed are the package's own (dist/cli/ → the package root).
const { name: packageName, version } = require('../../package.json') as { name: string; version: string };

function sandboxOptions(command: Command): Command {
  return command
    .addOption(new Option('--backend <tier>', "tier: 'kvm', 'wasm' or 'auto' (KVM when usable)").default('auto').argParser(parseBackend))
    .option('--heap <MiB>', 'guest heap size in MiB (default 64)', parsePositiveInteger)
    .option('--module <name=file>', 'add a module the handler imports as user:name (or ns:name=file); repeatable', collectModule, [])
    .option('--wall-ms <ms>', 'cancel a call after this much wall-clock time', parsePositiveInteger)
    .option('--cpu-ms <ms>', 'cancel a call after this much guest CPU time', parsePositiveInteger);
}

function program(setExitCode: (code: number) => void): Command {
  const cli = new Command('airlock')
    .description(`Airlock (npm package ${packageName}): run untrusted JavaScript handlers in KVM micro-VMs or WebAssembly sandboxes`)
    .version(version)
    .showHelpAfterError()
    .addHelpText(
      'after',
      '\nExit codes: 0 success; 1 the sandbox or handler failed (stderr names the error code);\n' +
        '2 the command line or an input file was unusable (nothing ran).',
    )
    .exitOverride();

  sandboxOptions(
    cli
      .command('run')
      .description('call the handler in <file> once with an event and print its result')
      .argument('<file>', 'handler module (.js): its `handler` function or default export')
      .option('--event <json>', 'the event, as JSON (default {})')
      .option('--event-file <file>', 'read the event from a JSON file'),
  )
    .option('--json', 'print one JSON object: ok, backend, result or error, stats (CallStats), console')
    .action(async (file: string, options) => setExitCode(await runCommand(file, options)));

  sandboxOptions(
    cli
      .command('repl')
      .description("evaluate lines in one sandbox's global scope (var and functions persist; .clear resets)"),
  ).action(async (options) => setExitCode(await replCommand(options)));

  cli
    .command('doctor')
    .description('say which tiers work here, and why not, with the fix for each problem')
    .option('--json', 'print the checks as one JSON object')
    .action(async (options) => setExitCode(await doctorCommand(options)));

  return cli;
}

async function main(): Promise<void> {
  let code: number = exitCodes.ok;
  try {
    await program((c) => (code = c)).parseAsync(process.argv);
  } catch (e) {
    // exitOverride turns commander's own exits (help, version, bad arguments) into
    // throws, so the exit code policy lives here: a bad command line is a usage error.
    if (!(e instanceof CommanderError)) throw e;
    code = e.exitCode === 0 ? exitCodes.ok : exitCodes.usage;
  }
  process.exitCode = code;
}

void main();
