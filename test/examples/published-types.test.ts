// published-types.test.ts — the d.ts users get (dist/, as packed): a consumer's ES module
// and CommonJS files type-check against it with internals refused (see fixtures/consumer.*),
// no internal name appears in it, and every public export and member has a doc comment.
// Needs the built package (`npm run setup` builds dist/).
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = join(__dirname, '..', '..');
const dist = join(root, 'dist');

describe('the published types', () => {
  it('type-check an ES-module and a CommonJS consumer, refusing internals', async () => {
    // The consumer files import 'airlock-vm', which resolves to dist/ through the package's
    // own "exports" (they sit inside the package), exactly as it does for an installed copy.
    const dir = join(root, 'out', 'published-types');
    mkdirSync(dir, { recursive: true });
    const config = {
      compilerOptions: {
        module: 'nodenext',
        moduleResolution: 'nodenext',
        target: 'es2022',
        lib: ['es2022', 'esnext.disposable'],
        types: ['node'],
        typeRoots: [join(root, 'node_modules', '@types')],
        strict: true,
        noEmit: true,
        skipLibCheck: false,
      },
      files: [join(root, 'test/examples/fixtures/consumer.mts'), join(root, 'test/examples/fixtures/consumer.cts')],
    };
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(config));
    const tsc = join(root, 'node_modules', '.bin', 'tsc');
    const result = await run(tsc, ['-p', join(dir, 'tsconfig.json')], { cwd: root }).catch((e) => e);
    expect(`${result.stdout ?? ''}${result.stderr ?? ''}`).toBe('');
  });

  it('name no internal of the views or the engine', () => {
    for (const file of ['index.d.ts', 'index.d.mts', 'sandbox.d.ts', 'builder.d.ts']) {
      const text = readFileSync(join(dist, file), 'utf8');
      for (const internal of ['SandboxCore', 'ViewSettings', 'EngineSnapshot', 'consumeWith', 'assertUsable', 'pinned', 'unwrap', '@internal']) {
        expect(text, `${file} mentions ${internal}`).not.toContain(internal);
      }
    }
  });

  it('document every export and every public member', () => {
    const program = ts.createProgram([join(dist, 'index.d.ts')], {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      types: ['node'],
      typeRoots: [join(root, 'node_modules', '@types')],
    });
    const checker = program.getTypeChecker();
    const entry = program.getSourceFile(join(dist, 'index.d.ts'));
    const moduleSymbol = entry && checker.getSymbolAtLocation(entry);
    expect(moduleSymbol).toBeDefined();
    const undocumented: string[] = [];
    const fromDist = (d: ts.Declaration | undefined) => d !== undefined && d.getSourceFile().fileName.startsWith(dist);
    const isHidden = (d: ts.Declaration) =>
      (ts.getCombinedModifierFlags(d) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) !== 0 ||
      (ts.isConstructorDeclaration(d) as boolean);
    const checkMembers = (owner: string, type: ts.Type) => {
      for (const member of checker.getPropertiesOfType(type)) {
        const decl = member.valueDeclaration ?? member.declarations?.[0];
        if (!fromDist(decl) || isHidden(decl!) || member.name.startsWith('#') || member.name === 'prototype') continue;
        if (member.getDocumentationComment(checker).length === 0) undocumented.push(`${owner}.${member.name}`);
      }
    };
    for (const exported of checker.getExportsOfModule(moduleSymbol!)) {
      const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
      if (symbol.getDocumentationComment(checker).length === 0) undocumented.push(exported.name);
      if (symbol.flags & (ts.SymbolFlags.Class | ts.SymbolFlags.Interface)) {
        checkMembers(exported.name, checker.getDeclaredTypeOfSymbol(symbol));
      }
      if (symbol.flags & ts.SymbolFlags.Class) {
        checkMembers(exported.name, checker.getTypeOfSymbol(symbol)); // static members
      }
    }
    expect(undocumented).toEqual([]);
  });
});
