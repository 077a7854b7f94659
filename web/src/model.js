// Loading and running the pixels-to-maps graph with ONNX Runtime Web.
import { simd } from 'wasm-feature-detect';

const CACHE_NAME = 'david-infer-models';
const GIB = 2 ** 30;
const WASM_MEMORY_LIMIT = 4 * GIB;

/** An error the page shows as it is: it says what is wrong and what to do. */
export class PageError extends Error {}

/** Browser memory the graph needs: its weights once in the WebAssembly heap and once while the
 * downloaded copy is handed over, plus room for the activations of a photo. */
export function memoryNeeded(modelBytes) {
  return 2 * modelBytes + 256 * 2 ** 20;
}

/** PageError when this browser cannot run the graph: no WebAssembly SIMD, or too little memory. */
export async function checkBrowser(model) {
  if (typeof WebAssembly !== 'object') {
    throw new PageError('This browser has no WebAssembly, which the model needs. Use a current Chrome, Edge, '
      + 'Firefox or Safari.');
  }
  if (!(await simd())) {
    throw new PageError('This browser lacks WebAssembly SIMD, which ONNX Runtime Web needs. Update it (Chrome/Edge '
      + '91+, Firefox 89+, Safari 16.4+) or turn WebAssembly SIMD back on.');
  }
  const need = memoryNeeded(model.bytes);
  const mb = (n) => `${Math.round(n / 2 ** 20)} MB`;
  const advice = 'Close other tabs, or export a smaller graph (FP16: david-infer export ... --prepost --precision fp16).';
  if (model.bytes > 2 * GIB - 1 || need > WASM_MEMORY_LIMIT) {
    throw new PageError(`The model (${mb(model.bytes)}) needs about ${mb(need)} of memory, more than the 4 GB a `
      + `browser gives WebAssembly. ${advice}`);
  }
  // Chrome reports its device memory rounded down to a power of two (at most 8 GB).
  if (navigator.deviceMemory !== undefined && navigator.deviceMemory * GIB < need) {
    throw new PageError(`Too little memory: the model needs about ${mb(need)} and this browser reports `
      + `${navigator.deviceMemory} GB for the whole device. ${advice}`);
  }
  try {
    new WebAssembly.Memory({ initial: Math.ceil(need / 65536), maximum: 65536 });  // reserved, not touched
  } catch (error) {
    throw new PageError(`Too little memory: this browser cannot reserve the ${mb(need)} the model needs `
      + `(${error.message}). ${advice}`);
  }
}

/** "webgpu" when the browser has a WebGPU adapter, else "wasm"; `?backend=wasm` forces WebAssembly. */
export async function chooseBackend(wanted) {
  if (wanted === 'wasm') return { name: 'wasm', label: 'WebAssembly' };
  if (navigator.gpu) {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (adapter) return { name: 'webgpu', label: `WebGPU (${adapter.info?.vendor || 'GPU'})` };
    } catch { /* no usable adapter: WebAssembly below */ }
  }
  if (wanted === 'webgpu') throw new PageError('WebGPU was asked for (?backend=webgpu) but this browser has no WebGPU adapter.');
  return { name: 'wasm', label: 'WebAssembly' };
}

/** The model's bytes: from the browser's cache when this version (its SHA-256) is there, else
 * downloaded with `onProgress(fraction)` and cached for the next visit (older versions dropped). */
export async function fetchModel(model, onProgress) {
  const url = new URL(`model.onnx?sha256=${model.sha256}`, location.href).href;
  let cache = null;
  try {
    cache = await caches.open(CACHE_NAME);
  } catch { /* no Cache API here (private window, insecure origin): download at every visit */ }
  const hit = cache && await cache.match(url);
  if (hit) {
    const bytes = new Uint8Array(await hit.arrayBuffer());
    if (bytes.length === model.bytes) return { bytes, cached: true };
    await cache.delete(url);
  }
  const response = await fetch(url);
  // the server's own words (e.g. the file changed since it started: restart it)
  if (!response.ok) throw new PageError(`The model could not be downloaded: HTTP ${response.status}: ${(await response.text()).trim()}`);
  const bytes = new Uint8Array(model.bytes);
  const reader = response.body.getReader();
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (received + value.length > bytes.length) throw new PageError('The model download is longer than announced; reload the page.');
    bytes.set(value, received);
    received += value.length;
    onProgress(received / bytes.length);
  }
  if (received !== bytes.length) {
    throw new PageError(`The model download stopped at ${received} of ${bytes.length} bytes; reload the page.`);
  }
  if (cache) {
    try {
      await cache.put(url, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } }));
      for (const request of await cache.keys()) if (request.url !== url) await cache.delete(request);
    } catch (error) {
      console.warn('the model is not cached for the next visit:', error);  // e.g. over the storage quota
    }
  }
  return { bytes, cached: false };
}

/** Float32Array of an output tensor (FP16 graphs may return float16). */
function asFloat32(tensor) {
  const data = tensor.data;
  if (data instanceof Float32Array) return data;
  if (tensor.type === 'float16' && data instanceof Uint16Array) return halvesToFloat32(data);
  return Float32Array.from(data);
}

function halvesToFloat32(halves) {
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i], sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    out[i] = sign * (exponent === 0 ? fraction * 2 ** -24
      : exponent === 31 ? (fraction ? NaN : Infinity) : (1 + fraction / 1024) * 2 ** (exponent - 15));
  }
  return out;
}

/** A loaded graph: `run(imageData)` -> { depth, normal, foreground, width, height, ms }. */
export class DavidModel {
  constructor(ort, session, model) {
    this.ort = ort;
    this.session = session;
    this.model = model;
    const missing = ['image'].filter((name) => !session.inputNames.includes(name));
    if (missing.length) {
      throw new PageError(`${model.name} has no input 'image' (it has ${session.inputNames.join(', ')}): it is not `
        + 'a pixels-to-maps graph. Export one with david-infer export ... --prepost.');
    }
  }

  static async load(backend, bytes, model, threads) {
    const ort = backend === 'webgpu' ? await import('onnxruntime-web/webgpu') : await import('onnxruntime-web/wasm');
    ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.proxy = false;
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, {
        executionProviders: backend === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'],
        graphOptimizationLevel: 'all',
      });
    } catch (error) {
      const text = String(error?.message ?? error);
      if (/memory|allocat|RangeError/i.test(text)) {
        throw new PageError(`Too little memory to load ${model.name} (${text}). Close other tabs, or export a `
          + 'smaller graph (FP16).');
      }
      throw new PageError(`ONNX Runtime could not load ${model.name}: ${text}`);
    }
    return new DavidModel(ort, session, model);
  }

  /** The graph's input: the photo's pixels (N=1, H, W, 3) uint8 in the manifest's channel order. */
  feeds(photo) {
    const { width, height, data } = photo;
    const pixels = new Uint8Array(width * height * 3);
    const [a, b, c] = this.model.channel_order === 'bgr' ? [2, 1, 0] : [0, 1, 2];
    for (let i = 0, j = 0; j < pixels.length; i += 4, j += 3) {
      pixels[j] = data[i + a];
      pixels[j + 1] = data[i + b];
      pixels[j + 2] = data[i + c];
    }
    return { image: new this.ort.Tensor('uint8', pixels, [1, height, width, 3]) };
  }

  async run(photo) {
    const feeds = this.feeds(photo);
    const start = performance.now();
    const outputs = await this.session.run(feeds);
    const ms = performance.now() - start;
    const maps = { width: photo.width, height: photo.height, ms };
    for (const task of ['depth', 'normal', 'foreground']) maps[task] = null;
    for (const task of this.model.tasks) {  // the tasks and their channels come from the manifest
      const data = outputs[task] ? asFloat32(outputs[task]) : null;
      const channels = this.model.task_table[task].channels;
      if (!data || data.length !== photo.width * photo.height * channels) {
        throw new PageError(`${this.model.name}: output '${task}' has ${data ? data.length : 'no'} values, expected `
          + `${photo.width} x ${photo.height} x ${channels}: the graph does not match its manifest.`);
      }
      maps[task] = data;
      outputs[task]?.dispose?.();
    }
    return maps;
  }
}
