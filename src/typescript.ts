// typescript.ts — turns TypeScript handler and module source into JavaScript on the host by
// blanking its types (ts-blank-space): every remaining character keeps its line and column,
// so guest stack traces and syntax errors point at the user's own source.
import { createRequire } from 'node:module';
import { CompileError, UnavailableError } from './errors.js';

type TsModule = typeof import('typescript');
type BlankSourceFile = (sourceFile: import('typescript').SourceFile, onError?: (node: import('typescript').Node) => void) => string;

// Loaded on the first TypeScript source only: the TypeScript parser takes a second or
// more to load, which sandboxes that never see TypeScript should not pay.
let loaded: { ts: TsModule; blankSourceFile: BlankSourceFile } | undefined;

// Optional peer dependencies: a package that needs no TypeScript handlers does not carry
// the TypeScript parser (tens of MiB). Missing, a TypeScript source is ERR_UNAVAILABLE.
function load(): { ts: TsModule; blankSourceFile: BlankSourceFile } {
  if (!loaded) {
    const require = createRequire(__filename);
    try {
      loaded = { ts: require('typescript') as TsModule, blankSourceFile: (require('ts-blank-space') as { blankSourceFile: BlankSourceFile }).blankSourceFile };
    } catch (e) {
      if ((e as { code?: string }).code !== 'MODULE_NOT_FOUND') throw e;
      const reason = 'TypeScript sources need the optional packages typescript and ts-blank-space: npm install typescript ts-blank-space';
      throw new UnavailableError(reason, [reason]);
    }
  }
  return loaded;
}

/** Options of addHandler()/addModule() for TypeScript source. */
export interface SourceOptions {
  /** The source is TypeScript: its types are stripped on the host before it is sent (default false). */
  typescript?: boolean;
}

/**
 * JavaScript with the same line and column for every character of `source`. A syntax error,
 * or TypeScript that needs code generation (enum, namespace with values, parameter
 * properties, `import x = require()`), is ERR_COMPILE naming `what` and the line and column.
 */
export function stripTypes(source: string, what: string): string {
  const { ts, blankSourceFile } = load();
  const file = ts.createSourceFile(`${what}.ts`, source, ts.ScriptTarget.ESNext, false, ts.ScriptKind.TS);
  const where = (pos: number) => {
    const { line, character } = file.getLineAndCharacterOfPosition(pos);
    return `${line + 1}:${character + 1}`;
  };
  // parseDiagnostics is how the parser reports syntax errors without a type-checking program.
  const diagnostics = (file as unknown as { parseDiagnostics?: import('typescript').DiagnosticWithLocation[] }).parseDiagnostics ?? [];
  if (diagnostics.length > 0) {
    const d = diagnostics[0];
    throw new CompileError(`${what}: TypeScript syntax error at ${where(d.start)}: ${ts.flattenDiagnosticMessageText(d.messageText, ' ')}`);
  }
  let unsupported: import('typescript').Node | undefined;
  const text = blankSourceFile(file, (node) => {
    unsupported ??= node;
  });
  if (unsupported) {
    const kind = ts.SyntaxKind[unsupported.kind];
    throw new CompileError(
      `${what}: TypeScript at ${where(unsupported.getStart(file))} (${kind}) needs code generation, which type stripping does not do; use plain types instead (no enum, namespace values or parameter properties)`,
    );
  }
  return text;
}
