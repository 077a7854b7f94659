// Builds the page into ../david_infer/web_static/ (shipped in the Python package): the app bundled by
// esbuild, ONNX Runtime Web's two builds (WebAssembly; WebGPU) as lazily loaded chunks, and the
// WebAssembly files they load, copied from node_modules so that nothing comes from a CDN.
import { build } from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const out = here('../david_infer/web_static/');
const ortDist = here('node_modules/onnxruntime-web/dist/');
// What ort.wasm.min.mjs and ort.webgpu.min.mjs load at run time (from ort.env.wasm.wasmPaths).
const ORT_FILES = ['ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm',
  'ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm'];

await rm(out, { recursive: true, force: true });
await mkdir(`${out}ort`, { recursive: true });
await build({
  entryPoints: [here('src/app.js')],
  bundle: true,
  splitting: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  outdir: out,
  chunkNames: 'chunks/[name]-[hash]',
  // The builds that load their WebAssembly from wasmPaths instead of embedding a second copy.
  conditions: ['onnxruntime-web-use-extern-wasm'],
  logLevel: 'warning',
});
for (const name of ['index.html', 'style.css', 'sw.js']) await copyFile(here(`src/${name}`), `${out}${name}`);
for (const name of ORT_FILES) await copyFile(`${ortDist}${name}`, `${out}ort/${name}`);
console.log(`built ${out}`);
