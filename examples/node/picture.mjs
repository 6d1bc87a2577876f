// Image files -> decoded pictures for vqkit.mjs, in Node.js: PNG by vqkit.mjs itself (zlib from Node),
// JPEG by jpeg-js's decoder, taking its raw samples (Y, YCbCr or CMYK) and converting colour the way
// libjpeg does (vqkit.mjs: ycbcrToRgb), then applying the EXIF orientation.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import vm from "node:vm";
import { inflateSync } from "node:zlib";
import { decodePng, isPng, jpegOrientation, orient, ycbcrToRgb } from "./vqkit.mjs";

// jpeg-js exports only a decode() that converts colour in floating point (and truncates); its JpegImage,
// which gives the raw samples, is loaded from the same file with one line added that exports it.
let JpegImage = null;
function jpegImage() {
  if (JpegImage) return JpegImage;
  const require = createRequire(import.meta.url);
  const file = require.resolve("jpeg-js/lib/decoder.js");
  const module = { exports: {} };
  const source = readFileSync(file, "utf8") + "\nmodule.exports.JpegImage = JpegImage;\n";
  vm.runInThisContext(`(function (module, exports, require) {${source}\n})`, { filename: file })(
    module, module.exports, require,
  );
  JpegImage = module.exports.JpegImage;
  return JpegImage;
}

function decodeJpeg(bytes) {
  const Jpeg = jpegImage();
  const jpeg = new Jpeg();
  jpeg.opts = { colorTransform: false, tolerantDecoding: true, maxResolutionInMP: 100, maxMemoryUsageInMB: 512 };
  Jpeg.resetMaxMemoryUsage(512 * 1024 * 1024);
  jpeg.parse(bytes);
  const { width, height } = jpeg;
  const components = jpeg.components.length;
  const raw = jpeg.getData(width, height); // colorTransform false: Y / YCbCr / CMYK samples as stored
  let pic;
  if (components === 1) pic = { width, height, bands: 1, data: Uint8Array.from(raw) };
  else if (components === 3) {
    if (jpeg.adobe && jpeg.adobe.transformCode === 0) pic = { width, height, bands: 3, data: Uint8Array.from(raw) };
    else pic = { width, height, bands: 3, data: ycbcrToRgb(raw) };
  } else if (components === 4) {
    if (jpeg.adobe && jpeg.adobe.transformCode) throw new Error("YCCK JPEGs are not handled by this example");
    pic = { width, height, bands: "CMYK", data: Uint8Array.from(raw) }; // jpeg-js un-inverts Adobe CMYK
  } else throw new Error(`a JPEG with ${components} components`);
  return orient(pic, jpegOrientation(bytes));
}

// One file -> { width, height, bands, data }.
export async function readPicture(path) {
  const bytes = new Uint8Array(readFileSync(path));
  if (isPng(bytes)) return decodePng(bytes, (data) => new Uint8Array(inflateSync(data)));
  if (bytes[0] === 0xff && bytes[1] === 0xd8) return decodeJpeg(bytes);
  throw new Error(`${path}: this example reads PNG and JPEG files`);
}
