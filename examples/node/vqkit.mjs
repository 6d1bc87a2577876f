// Run a vqkit tokenizer from its .onnx files alone: read the description each graph carries in its own
// metadata_props (vqkit.json is not needed), turn an image file into the encoder's input exactly as the
// description's preprocessing says (decode, EXIF orientation, bit depth, mode conversion, vqkit's bicubic
// resize with the width pass first, centre crop, float32 x / 127.5 - 1), and turn codes back into pixels.
// No dependencies: it runs in Node.js (examples/node) and in the browser (examples/web) alike. PNG files are
// decoded here (every colour type, bit depth, palette, tRNS and interlacing: the browser's canvas would lose
// colour under transparent pixels and 16-bit precision); the caller brings `inflate` (zlib) and, for other
// formats, the decoded pixels.

// --- the graph's own metadata --------------------------------------------------------------------------------
function readVarint(bytes, at) {
  let value = 0;
  let scale = 1;
  for (;;) {
    if (at >= bytes.length) throw new Error("truncated ONNX file");
    const byte = bytes[at++];
    value += (byte & 0x7f) * scale; // arithmetic, not bit operations: lengths may pass 2^31
    if (!(byte & 0x80)) return [value, at];
    scale *= 128;
  }
}

// Walk the top level of an ONNX ModelProto (protobuf wire format) and return metadata_props (field 14) as an
// object. Only the field headers are read; the graph itself is skipped by its length.
export function readMetadataProps(bytes) {
  const text = new TextDecoder();
  const props = {};
  let at = 0;
  while (at < bytes.length) {
    let key;
    [key, at] = readVarint(bytes, at);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) [, at] = readVarint(bytes, at);
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      let length;
      [length, at] = readVarint(bytes, at);
      if (field === 14) {
        const entry = bytes.subarray(at, at + length);
        const kv = {};
        let p = 0;
        while (p < entry.length) {
          let k, n;
          [k, p] = readVarint(entry, p);
          [n, p] = readVarint(entry, p);
          kv[k >> 3] = text.decode(entry.subarray(p, p + n));
          p += n;
        }
        props[kv[1]] = kv[2] ?? "";
      }
      at += length;
    } else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
  }
  return props;
}

// The description vqkit wrote into a graph: preprocessing, codes layout, sizes (see vqkit.json's keys).
export function describeGraph(bytes) {
  const props = readMetadataProps(bytes);
  if (!props.vqkit_json) throw new Error("this ONNX file carries no vqkit description (vqkit_json)");
  return JSON.parse(props.vqkit_json);
}

// --- decoded pictures ------------------------------------------------------------------------------------------
// A picture is { width, height, bands, data }: 8-bit samples, interleaved; bands 1 grey, 2 grey + alpha,
// 3 RGB, 4 RGBA, or "CMYK" (4 bands of non-inverted ink).

// EXIF (a TIFF structure) -> the Orientation tag (0x0112), or 1.
export function exifOrientation(tiff) {
  if (!tiff || tiff.length < 8) return 1;
  const little = tiff[0] === 0x49 && tiff[1] === 0x49;
  if (!little && !(tiff[0] === 0x4d && tiff[1] === 0x4d)) return 1;
  const u16 = (at) => (little ? tiff[at] | (tiff[at + 1] << 8) : (tiff[at] << 8) | tiff[at + 1]);
  const u32 = (at) => (little ? u16(at) + u16(at + 2) * 65536 : u16(at) * 65536 + u16(at + 2));
  const ifd = u32(4);
  if (ifd + 2 > tiff.length) return 1;
  const count = u16(ifd);
  for (let i = 0; i < count; i++) {
    const entry = ifd + 2 + 12 * i;
    if (entry + 12 > tiff.length) break;
    if (u16(entry) === 0x0112 && u16(entry + 2) === 3) return u16(entry + 8);
  }
  return 1;
}

// A JPEG's APP1 Exif block -> its orientation (1 without one).
export function jpegOrientation(bytes) {
  let at = 2;
  while (at + 4 <= bytes.length && bytes[at] === 0xff) {
    const marker = bytes[at + 1];
    const length = (bytes[at + 2] << 8) | bytes[at + 3];
    if (marker === 0xda || marker === 0xd9) break; // start of scan: no more metadata
    const body = bytes.subarray(at + 4, at + 2 + length);
    if (marker === 0xe1 && String.fromCharCode(...body.subarray(0, 6)) === "Exif\0\0") {
      return exifOrientation(body.subarray(6));
    }
    at += 2 + length;
  }
  return 1;
}

// Apply an EXIF orientation (2..8) to a picture, as the description's preprocessing.orientation says.
export function orient(pic, orientation) {
  if (!(orientation >= 2 && orientation <= 8)) return pic;
  const { width: w, height: h, data } = pic;
  const n = pic.bands === "CMYK" ? 4 : pic.bands;
  const swap = orientation >= 5;
  const ow = swap ? h : w;
  const oh = swap ? w : h;
  const out = new Uint8Array(ow * oh * n);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let sx, sy;
      switch (orientation) {
        case 2: sx = w - 1 - x; sy = y; break; // mirror left-right
        case 3: sx = w - 1 - x; sy = h - 1 - y; break; // rotate 180
        case 4: sx = x; sy = h - 1 - y; break; // mirror top-bottom
        case 5: sx = y; sy = x; break; // transpose
        case 6: sx = y; sy = h - 1 - x; break; // rotate 90 clockwise
        case 7: sx = w - 1 - y; sy = h - 1 - x; break; // transverse
        default: sx = w - 1 - y; sy = x; // 8: rotate 90 counter-clockwise
      }
      const from = (sy * w + sx) * n;
      out.set(data.subarray(from, from + n), (y * ow + x) * n);
    }
  }
  return { ...pic, width: ow, height: oh, data: out };
}

// --- PNG, decoded by the description's rules ---------------------------------------------------------------
const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
export function isPng(bytes) {
  return PNG_SIGNATURE.every((b, i) => bytes[i] === b);
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

// One (sub)image's filtered scanlines -> unfiltered rows of bytes.
function unfilter(raw, at, rows, rowBytes, bpp) {
  const out = new Uint8Array(rows * rowBytes);
  for (let y = 0; y < rows; y++) {
    const filter = raw[at++];
    const row = y * rowBytes;
    for (let i = 0; i < rowBytes; i++) {
      const x = raw[at++];
      const a = i >= bpp ? out[row + i - bpp] : 0;
      const b = y > 0 ? out[row - rowBytes + i] : 0;
      const c = i >= bpp && y > 0 ? out[row - rowBytes + i - bpp] : 0;
      const pred = filter === 0 ? 0 : filter === 1 ? a : filter === 2 ? b : filter === 3 ? (a + b) >> 1 : paeth(a, b, c);
      if (filter > 4) throw new Error(`not a valid PNG (filter type ${filter})`);
      out[row + i] = (x + pred) & 0xff;
    }
  }
  return [out, at];
}

// `inflate(Uint8Array) -> Promise<Uint8Array> | Uint8Array` undoes zlib (Node: zlib.inflateSync; the browser:
// DecompressionStream("deflate")).
export async function decodePng(bytes, inflate) {
  if (!isPng(bytes)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 8;
  let ihdr = null, palette = null, trns = null, orientation = 1;
  const idat = [];
  while (at + 8 <= bytes.length) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const body = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      const v = new DataView(body.buffer, body.byteOffset, body.byteLength);
      ihdr = { width: v.getUint32(0), height: v.getUint32(4), depth: body[8], type: body[9], interlace: body[12] };
    } else if (type === "PLTE") palette = body;
    else if (type === "tRNS") trns = body;
    else if (type === "eXIf") orientation = exifOrientation(body);
    else if (type === "IDAT") idat.push(body);
    else if (type === "IEND") break;
    at += 12 + length;
  }
  if (!ihdr || idat.length === 0) throw new Error("not a valid PNG (no IHDR or image data)");
  const { width, height, depth, type, interlace } = ihdr;
  const samples = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[type];
  if (samples === undefined) throw new Error(`not a valid PNG (colour type ${type})`);
  const joined = new Uint8Array(idat.reduce((n, c) => n + c.length, 0));
  idat.reduce((o, c) => (joined.set(c, o), o + c.length), 0);
  const raw = await inflate(joined);
  const bpp = Math.max(1, (samples * depth) >> 3);
  const bands = type === 3 ? (trns ? 4 : 3) : samples;
  const data = new Uint8Array(width * height * bands);
  const maxLow = (1 << depth) - 1;
  // One sample -> 8 bits: the description's bit_depth rule.
  const eight = (v) => {
    if (type === 3) return v; // a palette index
    if (depth < 8) return (v * 255) / maxLow;
    if (depth === 8) return v;
    return type === 0 ? Math.floor((v * 255 + 32767) / 65535) : v >> 8;
  };
  const passes = interlace
    ? [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]]
    : [[0, 0, 1, 1]];
  let pos = 0;
  for (const [x0, y0, dx, dy] of passes) {
    const pw = Math.ceil((width - x0) / dx);
    const ph = Math.ceil((height - y0) / dy);
    if (pw <= 0 || ph <= 0) continue;
    const rowBytes = Math.ceil((pw * samples * depth) / 8);
    let rows;
    [rows, pos] = unfilter(raw, pos, ph, rowBytes, bpp);
    for (let y = 0; y < ph; y++) {
      for (let x = 0; x < pw; x++) {
        const values = [];
        for (let s = 0; s < samples; s++) {
          const index = x * samples + s;
          let v;
          if (depth === 16) v = (rows[y * rowBytes + 2 * index] << 8) | rows[y * rowBytes + 2 * index + 1];
          else if (depth === 8) v = rows[y * rowBytes + index];
          else {
            const bit = index * depth;
            v = (rows[y * rowBytes + (bit >> 3)] >> (8 - depth - (bit & 7))) & maxLow;
          }
          values.push(eight(v));
        }
        const o = ((y0 + y * dy) * width + (x0 + x * dx)) * bands;
        if (type === 3) {
          const i = values[0];
          for (let c = 0; c < 3; c++) data[o + c] = palette && 3 * i + c < palette.length ? palette[3 * i + c] : 0;
          if (trns) data[o + 3] = i < trns.length ? trns[i] : 255;
        } else for (let s = 0; s < samples; s++) data[o + s] = values[s];
      }
    }
  }
  return orient({ width, height, bands, data }, orientation);
}

// --- JPEG colour, as libjpeg(-turbo) computes it (what vqkit's Pillow uses) ----------------------------------
const FIX = (x) => Math.floor(x * 65536 + 0.5);
// Raw YCbCr samples (interleaved) -> RGB with libjpeg's 16-bit fixed-point tables (jdcolor.c).
export function ycbcrToRgb(data) {
  const out = new Uint8Array(data.length);
  const clip = (v) => (v < 0 ? 0 : v > 255 ? 255 : v);
  for (let i = 0; i < data.length; i += 3) {
    const y = data[i], cb = data[i + 1] - 128, cr = data[i + 2] - 128;
    out[i] = clip(y + Math.floor((FIX(1.402) * cr + 32768) / 65536));
    out[i + 1] = clip(y + Math.floor((-FIX(0.34414) * cb + 32768 - FIX(0.71414) * cr) / 65536));
    out[i + 2] = clip(y + Math.floor((FIX(1.772) * cb + 32768) / 65536));
  }
  return out;
}

// --- preprocessing ---------------------------------------------------------------------------------------------
// A picture -> the model's channels (description's convert/alpha/grey_conversion): alpha dropped, never
// composited; CMYK to RGB; grey copied to RGB; RGB to grey by ITU-R 601-2 luma in fixed point.
function convertMode(pic, channels) {
  const n = pic.width * pic.height;
  const out = new Uint8Array(n * channels);
  const d = pic.data;
  for (let i = 0; i < n; i++) {
    let r, g, b;
    if (pic.bands === "CMYK") {
      const k = 255 - d[4 * i + 3];
      const ink = (c) => Math.floor(((255 - c) * k) / 255); // as browsers convert CMYK
      [r, g, b] = [ink(d[4 * i]), ink(d[4 * i + 1]), ink(d[4 * i + 2])];
    } else if (pic.bands <= 2) {
      r = g = b = d[pic.bands * i];
    } else {
      [r, g, b] = [d[pic.bands * i], d[pic.bands * i + 1], d[pic.bands * i + 2]];
    }
    if (channels === 1) out[i] = pic.bands <= 2 ? r : Math.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536);
    else [out[3 * i], out[3 * i + 1], out[3 * i + 2]] = [r, g, b];
  }
  return out;
}

// Python's round(): halves go to the even neighbour.
function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

const PRECISION_BITS = 22; // the description's resize.weights: 22-bit fixed point
function bicubic(x) {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// The integer weights of one axis (description: preprocessing.resize.weights): per output index its first
// input index and its taps.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const taps = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = [];
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const v = bicubic((x + xmin - center + 0.5) * ss);
      w.push(v);
      total += v;
    }
    const k = w.map((v) => {
      const u = total !== 0 ? v / total : v;
      return u < 0 ? Math.trunc(-0.5 + u * 2 ** PRECISION_BITS) : Math.trunc(0.5 + u * 2 ** PRECISION_BITS);
    });
    taps.push({ xmin, k });
  }
  return taps;
}

function clip8(sum) {
  const v = Math.floor(sum / 2 ** PRECISION_BITS);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// One resampling pass along x (horizontal) or y, on interleaved 8-bit channels.
function resamplePass(src, width, height, channels, outSize, horizontal) {
  const inSize = horizontal ? width : height;
  const taps = coefficients(inSize, outSize);
  const ow = horizontal ? outSize : width;
  const oh = horizontal ? height : outSize;
  const out = new Uint8Array(ow * oh * channels);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const { xmin, k } = taps[horizontal ? x : y];
      for (let c = 0; c < channels; c++) {
        let sum = 2 ** (PRECISION_BITS - 1);
        for (let t = 0; t < k.length; t++) {
          const sx = horizontal ? xmin + t : x;
          const sy = horizontal ? y : xmin + t;
          sum += src[(sy * width + sx) * channels + c] * k[t];
        }
        out[(y * ow + x) * channels + c] = clip8(sum);
      }
    }
  }
  return out;
}

// A picture (already oriented) -> the encoder's float32 NCHW input, following the graph's description.
// Returns { data, uint8 } where uint8 is the converted, resized, cropped image (HWC), for checks and display.
// For backward compatibility an RGBA Uint8Array with its width and height is accepted too.
export function preprocess(pic, desc, height, legacyDesc) {
  if (pic instanceof Uint8Array || pic instanceof Uint8ClampedArray) {
    pic = { width: desc, height, bands: 4, data: pic };
    desc = legacyDesc;
  }
  const channels = desc.channels;
  const size = desc.image_size;
  if (channels !== 1 && channels !== 3) {
    throw new Error(`this example handles 1- and 3-channel tokenizers, not ${channels}`);
  }
  const pre = desc.preprocessing;
  if (pre.pixel_mapping !== "x / 127.5 - 1") throw new Error(`unknown pixel mapping ${pre.pixel_mapping}`);
  if (pre.resize.pass_order !== undefined && pre.resize.pass_order !== "width then height, always") {
    throw new Error(`unknown resize pass order ${pre.resize.pass_order}`);
  }
  let img = convertMode(pic, channels);
  let w = pic.width;
  let h = pic.height;
  if (w !== size || h !== size) {
    const scale = size / Math.min(w, h);
    const nw = Math.max(size, roundHalfEven(w * scale));
    const nh = Math.max(size, roundHalfEven(h * scale));
    if (nw !== w) img = resamplePass(img, w, h, channels, nw, true); // the width pass first, always
    if (nh !== h) img = resamplePass(img, nw, h, channels, nh, false);
    const left = Math.floor((nw - size) / 2);
    const top = Math.floor((nh - size) / 2);
    const crop = new Uint8Array(size * size * channels);
    for (let y = 0; y < size; y++) {
      const from = ((top + y) * nw + left) * channels;
      crop.set(img.subarray(from, from + size * channels), y * size * channels);
    }
    img = crop;
    w = h = size;
  }
  // float32 arithmetic, as the description's "arithmetic" says: each operation rounded to float32.
  const data = new Float32Array(channels * size * size);
  const step = Math.fround(127.5);
  for (let i = 0; i < size * size; i++) {
    for (let c = 0; c < channels; c++) {
      data[c * size * size + i] = Math.fround(Math.fround(img[i * channels + c] / step) - 1);
    }
  }
  return { data, uint8: img };
}

// --- running the graphs ----------------------------------------------------------------------------------------
// `ort` is the onnxruntime-node or onnxruntime-web module; `bytes` each graph file's contents.
export async function openTokenizer(ort, encoderBytes, decoderBytes, options = {}) {
  const desc = describeGraph(encoderBytes);
  const encoder = await ort.InferenceSession.create(encoderBytes, options);
  const decoder = await ort.InferenceSession.create(decoderBytes, options);
  const size = desc.image_size;
  const codesShape = desc.codes.shape.slice(1);
  return {
    desc,
    // A decoded picture ({ width, height, bands, data }) -> { codes: number[] (row-major codes.shape
    // without the batch), uint8 }. (RGBA pixels, width, height are accepted too.)
    async encode(pic, width, height) {
      const { data, uint8 } = width === undefined ? preprocess(pic, desc) : preprocess(pic, width, height, desc);
      const input = new ort.Tensor("float32", data, [1, desc.channels, size, size]);
      const out = await encoder.run({ [encoder.inputNames[0]]: input });
      const codes = Array.from(out[encoder.outputNames[0]].data, Number);
      if (codes.some((c) => c < 0)) throw new Error("the encoder flagged this image's input as invalid (code -1)");
      return { codes, shape: codesShape, uint8 };
    },
    // codes of one image -> RGBA pixels (size x size), mapped back by clip(round((y + 1) * 127.5))
    async decode(codes) {
      const k = desc.codes.codebook_size;
      if (codes.some((c) => !Number.isInteger(c) || c < 0 || c >= k)) {
        throw new Error(`codes must be integers in [0, ${k - 1}]`);
      }
      const typed = desc.codes.dtype === "int32" ? Int32Array.from(codes) : BigInt64Array.from(codes, BigInt);
      const input = new ort.Tensor(desc.codes.dtype, typed, [1, ...codesShape]);
      const out = await decoder.run({ [decoder.inputNames[0]]: input });
      const y = out[decoder.outputNames[0]].data;
      const rgba = new Uint8ClampedArray(size * size * 4);
      for (let i = 0; i < size * size; i++) {
        for (let c = 0; c < 3; c++) {
          const v = y[(desc.channels === 1 ? 0 : c) * size * size + i];
          rgba[4 * i + c] = Math.min(255, Math.max(0, roundHalfEven((v + 1) * 127.5)));
        }
        rgba[4 * i + 3] = 255;
      }
      return rgba;
    },
  };
}
