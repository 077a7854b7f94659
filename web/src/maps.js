// Pictures of the model's maps, drawn into ImageData (RGBA, 8 bits). All maps are (H, W) or
// (H, W, 3) Float32Arrays at the photo's size; the camera frame is x right, y up, z toward the viewer.

const BACKGROUND = [40, 40, 40];

/** The one rule for "no person found", as the Python package's (`david_infer._arrays.mask_is_empty`):
 * a mask keeps no pixel when every value is below half a grey level, so applying it changes nothing. */
export const EMPTY_MASK_LEVEL = 0.5 / 255;
/** What the page says then: the same words as the package's EmptyMaskWarning for the cut-out and `relight`. */
export const EMPTY_MASK_WARNING = 'the foreground mask keeps no pixel (no person found), so the cut-out is fully '
  + 'transparent and the re-lit photo is the photo unchanged';

/** True when the mask keeps no pixel (EMPTY_MASK_LEVEL); a missing mask is not empty (there is none). */
export function maskIsEmpty(foreground, count) {
  if (!foreground) return false;
  for (let i = 0; i < count; i++) if (foreground[i] >= EMPTY_MASK_LEVEL) return false;
  return true;
}

/** The mask the depth picture fades outside, or null when there is none or it keeps no pixel: an empty
 * mask (a random-weight model's) would black out the depth. */
export function personMask(foreground, count) {
  return foreground && !maskIsEmpty(foreground, count) ? foreground : null;
}

/** Depth as grey levels, near bright, min-max normalised over the person (or the whole frame).
 * `depthSign` -1: larger values are nearer (the exported graphs' default); 1: larger are farther. */
export function depthPicture(depth, foreground, width, height, depthSign = -1) {
  const count = width * height;
  const mask = personMask(foreground, count);
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < count; i++) {
    if (mask && mask[i] < 0.5) continue;
    const d = depth[i];
    if (d < lo) lo = d;
    if (d > hi) hi = d;
  }
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  const out = new ImageData(width, height);
  for (let i = 0, j = 0; i < count; i++, j += 4) {
    const grey = depthSign < 0 ? (depth[i] - lo) * scale : 255 - (depth[i] - lo) * scale;
    const a = mask ? mask[i] : 1;
    for (let c = 0; c < 3; c++) out.data[j + c] = a * grey + (1 - a) * BACKGROUND[c];
    out.data[j + 3] = 255;
  }
  return out;
}

/** Normals as colours: (n + 1) / 2 * 255, x -> red, y -> green, z -> blue; `channels` values a pixel
 * (the manifest's task table says how many). */
export function normalPicture(normal, width, height, channels) {
  const out = new ImageData(width, height);
  for (let i = 0, j = 0, k = 0; i < width * height; i++, j += 4, k += channels) {
    for (let c = 0; c < 3; c++) out.data[j + c] = (Math.max(-1, Math.min(1, normal[k + c])) + 1) * 127.5;
    out.data[j + 3] = 255;
  }
  return out;
}

/** The photo with the soft mask as its alpha channel. */
export function cutoutPicture(photo, foreground) {
  const out = new ImageData(new Uint8ClampedArray(photo.data), photo.width, photo.height);
  for (let i = 0, j = 3; i < photo.width * photo.height; i++, j += 4) out.data[j] = foreground[i] * 255;
  return out;
}

/** The unit light direction for a point of the relit picture: its centre is straight on (0, 0, 1),
 * the edge of the inscribed circle grazes the surface. `u`, `v` are in [0, 1] from the top left. */
export function lightFromPoint(u, v) {
  let x = u * 2 - 1, y = 1 - v * 2;
  const r = Math.hypot(x, y);
  if (r > 1) { x /= r; y /= r; }
  return [x, y, Math.sqrt(Math.max(0, 1 - x * x - y * y))];
}

/** Lambertian relighting, as `david-infer relight`: each pixel times ambient + (1 - ambient) * max(0, n.l);
 * with a mask only the person is re-lit, the background keeps its pixels (blended by the mask), so a mask
 * that keeps no pixel leaves the photo unchanged (`maskIsEmpty`: the page says so). */
export function relitPicture(photo, normal, foreground, light, ambient) {
  const out = new ImageData(photo.width, photo.height);
  const [lx, ly, lz] = light;
  const src = photo.data, dst = out.data;
  const mask = foreground || null;
  for (let i = 0, j = 0, k = 0; i < photo.width * photo.height; i++, j += 4, k += 3) {
    const nx = normal[k], ny = normal[k + 1], nz = normal[k + 2];
    const length = Math.hypot(nx, ny, nz);
    const cos = length > 0 ? Math.max(0, (nx * lx + ny * ly + nz * lz) / length) : 0;
    const shade = ambient + (1 - ambient) * cos;
    const a = mask ? Math.min(1, Math.max(0, mask[i])) : 1;
    for (let c = 0; c < 3; c++) dst[j + c] = a * src[j + c] * shade + (1 - a) * src[j + c];
    dst[j + 3] = 255;
  }
  return out;
}
