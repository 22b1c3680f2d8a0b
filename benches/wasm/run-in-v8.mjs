// Runs a wasm32-wasip1 program (the `micro` benchmark suite) inside V8, through Node's
// WASI preview1 implementation: stdout, args, clock_time_get (Instant, SystemTime) and
// random_get are the imports it uses.
//
// usage: node --no-warnings run-in-v8.mjs <program.wasm> [program args...]
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [file, ...args] = process.argv.slice(2);
if (!file) {
  console.error('usage: node run-in-v8.mjs <program.wasm> [args...]');
  process.exit(2);
}
const wasi = new WASI({ version: 'preview1', args: ['micro', ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
