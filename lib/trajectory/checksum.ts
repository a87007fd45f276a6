// CRC-32 (zlib polynomial) of chunk data: the native addon's libdeflate kernel where it loads,
// zlib's otherwise. Both compute the same value; the native one is several times faster, which
// matters because every chunk is verified while the backward pass computes.
import { crc32 as zlibCrc32 } from 'node:zlib';
import { nativeAddon } from '../backend/loader.js';

let impl: ((data: Uint8Array, previous: number) => number) | undefined;

export function crc32(data: Uint8Array, previous = 0): number {
  if (!impl) {
    const addon = nativeAddon();
    impl = addon && typeof addon.crc32 === 'function' ? (d, p) => addon.crc32(d, p) : (d, p) => zlibCrc32(d, p) >>> 0;
  }
  return impl(data, previous);
}
