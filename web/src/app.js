// The page: load the graph (progress, browser cache), take a photo (file, drop, camera), show the
// maps side by side, relight from the normals, download PNGs. State for tests and the benchmark
// is on `window.david` (phase, backend, result maps, timings).
import { PageError, checkBrowser, chooseBackend, fetchModel, DavidModel } from './model.js';
import {
  EMPTY_MASK_WARNING, cutoutPicture, depthPicture, lightFromPoint, maskIsEmpty, normalPicture, relitPicture,
} from './maps.js';

const MAX_SIDE = 4096;  // larger photos are scaled down first: a 24 MP photo would need GBs of maps
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const david = window.david = {
  phase: 'starting', backend: null, threads: 0, cached: null, error: null, result: null, photoName: null, maskWarning: null,
  timings: { start: performance.now() }, light: [0, 0, 1], ambient: 0.2, runs: 0, errors: 0,
};
let model = null;
let photo = null;   // ImageData of the photo at the size the model saw it
let busy = false;

function setStatus(text, phase) {
  $('status').textContent = text;
  if (phase) david.phase = phase;
}

function showError(error) {
  const message = error instanceof PageError ? error.message : `Something went wrong: ${error?.message ?? error}`;
  david.error = message;
  david.errors += 1;
  $('error').textContent = message;
  $('error').hidden = false;
  if (!model) setStatus('The model is not loaded.', 'failed');
  if (!(error instanceof PageError)) console.error(error);
}

function clearError() {
  david.error = null;
  $('error').hidden = true;
}

async function start() {
  const info = await fetch('model.json').then(async (r) => {
    if (!r.ok) throw new PageError(`The server did not describe the model (HTTP ${r.status}): ${(await r.text()).trim()}`);
    return r.json();
  });
  david.model = info;
  await checkBrowser(info);
  const backend = await chooseBackend(params.get('backend'));
  // Threads need cross-origin isolation (SharedArrayBuffer); the local server sends its headers.
  const threads = crossOriginIsolated
    ? Number(params.get('threads')) || Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  Object.assign(david, { backend: backend.name, threads });
  $('backend').textContent = backend.name === 'wasm' ? `${backend.label} (SIMD, ${threads} thread${threads > 1 ? 's' : ''})`
    : backend.label;

  setStatus(`Downloading ${info.name} (${(info.bytes / 1e6).toFixed(1)} MB)…`, 'downloading');
  $('progress').hidden = false;
  const { bytes, cached } = await fetchModel(info, (fraction) => { $('progress').value = fraction; });
  david.cached = cached;
  david.timings.downloaded = performance.now();
  $('progress').removeAttribute('value');  // indeterminate while ONNX Runtime builds the session
  setStatus(`Loading ${info.name}${cached ? ' from the browser cache' : ''}…`, 'loading');
  model = await DavidModel.load(backend.name, bytes, info, threads);
  david.timings.loaded = performance.now();
  $('progress').hidden = true;
  setStatus(`Ready: ${info.name} (${info.precision}${cached ? ', from the browser cache' : ''}). Give it a photo.`,
    'ready');
}

/** ImageData of an image file, EXIF orientation applied, no colour conversion (the Python reader's pixels). */
async function decode(blob, name) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none',
      imageOrientation: 'from-image' });
  } catch {
    throw new PageError(`${name} is not an image this browser can decode (${blob.type || 'unknown type'}, `
      + `${blob.size} bytes). Give it a PNG, JPEG or WebP photo.`);
  }
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const width = Math.round(bitmap.width * scale), height = Math.round(bitmap.height * scale);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  return context.getImageData(0, 0, width, height, { colorSpace: 'srgb' });
}

function draw(id, image) {
  const canvas = $(id);
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext('2d').putImageData(image, 0, 0);
}

function drawRelit() {
  const { result } = david;
  if (!result?.normal) return;
  draw('relit', relitPicture(photo, result.normal, result.foreground, david.light, david.ambient));
}

async function process(blob, name) {
  if (!model) throw new PageError('The model is not loaded yet; wait for "Ready".');
  if (busy) throw new PageError('Still working on the previous photo.');
  busy = true;
  clearError();
  try {
    setStatus(`Reading ${name}…`, 'running');
    photo = await decode(blob, name);
    setStatus(`Running the model on ${name} (${photo.width}x${photo.height})…`, 'running');
    const result = await model.run(photo);
    Object.assign(david, { result, photoName: name, runs: david.runs + 1 });
    if (david.timings.firstResult === undefined) david.timings.firstResult = performance.now();
    $('maps').hidden = false;
    draw('photo', photo);
    for (const [id, present] of [['depth', result.depth], ['normal', result.normal], ['foreground', result.foreground],
      ['relit', result.normal]]) $(id).closest('figure').hidden = !present;
    if (result.depth) draw('depth', depthPicture(result.depth, result.foreground, photo.width, photo.height,
      david.model.task_table.depth.sign));
    if (result.normal) {
      draw('normal', normalPicture(result.normal, photo.width, photo.height, david.model.task_table.normal.channels));
    }
    if (result.foreground) draw('foreground', cutoutPicture(photo, result.foreground));
    drawRelit();
    // the package's rule and words for a mask that keeps no pixel (david_infer._arrays.mask_is_empty)
    david.maskWarning = maskIsEmpty(result.foreground, photo.width * photo.height) ? EMPTY_MASK_WARNING : null;
    $('mask-warning').textContent = david.maskWarning ? `Warning: ${david.maskWarning}.` : '';
    $('mask-warning').hidden = !david.maskWarning;
    $('timing').textContent = `${name}: ${photo.width}x${photo.height}, model ${result.ms.toFixed(0)} ms`;
    setStatus(`Done: ${name}.`, 'done');
  } catch (error) {
    setStatus(model ? 'Ready. Give it a photo.' : 'The model is not loaded.', model ? 'ready' : 'failed');
    throw error;
  } finally {
    busy = false;
  }
}

function handle(promise) {
  promise.catch(showError);
}

function download(kind) {
  const stem = (david.photoName || 'photo').replace(/\.[^.]*$/, '');
  $(kind).toBlob((blob) => {
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    link.download = `${stem}-${kind}.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, 'image/png');
}

async function openCamera() {
  if (!navigator.mediaDevices?.getUserMedia) throw new PageError('This browser gives the page no camera.');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false });
  } catch (error) {
    throw new PageError(`The camera could not be opened (${error.name}: ${error.message}).`);
  }
  const video = $('camera');
  video.srcObject = stream;
  video.hidden = $('snap').hidden = false;
  await video.play();
}

async function snap() {
  const video = $('camera');
  const canvas = new OffscreenCanvas(video.videoWidth, video.videoHeight);
  canvas.getContext('2d').drawImage(video, 0, 0);
  video.srcObject.getTracks().forEach((track) => track.stop());
  video.hidden = $('snap').hidden = true;
  await process(await canvas.convertToBlob({ type: 'image/png' }), 'camera.png');
}

function wire() {
  $('file').addEventListener('change', (event) => {
    const file = event.target.files[0];
    if (file) handle(process(file, file.name));
    event.target.value = '';
  });
  const drop = $('drop');
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const file = event.dataTransfer.files[0];
    if (file) handle(process(file, file.name));
  });
  $('camera-button').addEventListener('click', () => handle(openCamera()));
  $('snap').addEventListener('click', () => handle(snap()));
  $('ambient').addEventListener('input', (event) => { david.ambient = Number(event.target.value); drawRelit(); });
  const relit = $('relit');
  const moveLight = (event) => {
    const box = relit.getBoundingClientRect();
    david.light = lightFromPoint((event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height);
    drawRelit();
  };
  relit.addEventListener('pointerdown', (event) => { relit.setPointerCapture(event.pointerId); moveLight(event); });
  relit.addEventListener('pointermove', (event) => { if (relit.hasPointerCapture(event.pointerId)) moveLight(event); });
  for (const button of document.querySelectorAll('[data-download]')) {
    button.addEventListener('click', () => download(button.dataset.download));
  }
  window.addEventListener('unhandledrejection', (event) => showError(event.reason));
}

/** For benchmarks: `n` more runs of the model on the current photo; the model times in ms. */
david.timeRuns = async (n) => {
  const times = [];
  for (let i = 0; i < n; i++) times.push((await model.run(photo)).ms);
  return times;
};

wire();
// Offline next time: the service worker keeps the last good copy of the page and its files.
navigator.serviceWorker?.register('sw.js').catch((error) => console.warn('no service worker:', error));
handle(start());
