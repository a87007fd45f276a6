// Small images as inline PNG data URIs: a 28×28 image is a few hundred bytes this way, where one
// SVG rect per pixel would be tens of kilobytes. Encoded here with zlib; no network, no canvas.
import { crc32, deflateSync } from 'node:zlib';
import type { ImageSpec } from './input.js';

function chunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])) >>> 0, 0);
  return Buffer.concat([head, data, crc]);
}

/** An 8-bit greyscale (channels 1) or RGB (channels 3) PNG of `pixels` (row-major, 0..255). */
export function encodePng(width: number, height: number, channels: 1 | 3, pixels: Uint8Array): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = channels === 3 ? 2 : 0; // colour type: RGB or greyscale
  const stride = width * channels;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (stride + 1)] = 0; // filter: none
    raw.set(pixels.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

/** The value range images are mapped through: the spec's, else the min and max of `data`. */
export function imageRange(spec: ImageSpec, data: ArrayLike<number>): [number, number] {
  if (spec.range) return spec.range;
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (Number.isFinite(v)) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  }
  return lo < hi ? [lo, hi] : [lo === Infinity ? 0 : lo, lo === Infinity ? 1 : lo + 1];
}

/** Image `index` of `data` (n × h × w [× c]) as a data: URI. */
export function imageUri(data: ArrayLike<number>, index: number, spec: ImageSpec, range: [number, number]): string {
  const c = spec.channels ?? 1;
  const size = spec.height * spec.width * c;
  const px = new Uint8Array(size);
  const [lo, hi] = range;
  for (let i = 0; i < size; i++) {
    const v = data[index * size + i]!;
    const t = Number.isFinite(v) ? Math.min(1, Math.max(0, (v - lo) / (hi - lo || 1))) : 0;
    px[i] = Math.round(255 * (spec.invert ? 1 - t : t));
  }
  return `data:image/png;base64,${encodePng(spec.width, spec.height, c, px).toString('base64')}`;
}
