// Run a vqkit tokenizer from its .onnx files alone: read the description each graph carries in its own
// metadata_props (vqkit.json is not needed), preprocess an image exactly as vqkit does (vqkit.images.read_image:
// Pillow's mode conversion, shorter-side bicubic resize, centre crop, x / 127.5 - 1), and turn codes back into
// pixels. No dependencies: it runs in Node.js (examples/node) and in the browser (examples/web) alike; the
// caller brings onnxruntime-node or onnxruntime-web and decodes the image file to RGBA pixels.

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

// --- preprocessing, as vqkit.images.read_image does it with Pillow ---------------------------------------------
// Pillow's convert(): "L" uses ITU-R 601-2 luma in fixed point; alpha is dropped, not composited.
function convertMode(rgba, width, height, channels) {
  const n = width * height;
  const out = new Uint8Array(n * channels);
  for (let i = 0; i < n; i++) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    if (channels === 1) out[i] = Math.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536);
    else for (let c = 0; c < channels; c++) out[channels * i + c] = rgba[4 * i + c];
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

const PRECISION_BITS = 32 - 8 - 2; // Pillow's Resample.c fixed point
function bicubic(x) {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: per output index its first input index,
// tap count and integer weights.
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

// RGBA pixels (any size) -> the encoder's float32 NCHW input, following the graph's description. Returns
// { data, uint8 } where uint8 is the converted, resized, cropped image (HWC), for checks and display.
export function preprocess(rgba, width, height, desc) {
  const channels = desc.channels;
  const size = desc.image_size;
  if (channels !== 1 && channels !== 3) {
    throw new Error(`this example handles 1- and 3-channel tokenizers, not ${channels}`);
  }
  const pre = desc.preprocessing;
  if (pre.pixel_mapping !== "x / 127.5 - 1") throw new Error(`unknown pixel mapping ${pre.pixel_mapping}`);
  let img = convertMode(rgba, width, height, channels);
  let w = width;
  let h = height;
  if (w !== size || h !== size) {
    const scale = size / Math.min(w, h);
    const nw = Math.max(size, roundHalfEven(w * scale));
    const nh = Math.max(size, roundHalfEven(h * scale));
    if (nw !== w) img = resamplePass(img, w, h, channels, nw, true);
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
  const data = new Float32Array(channels * size * size);
  for (let i = 0; i < size * size; i++) {
    for (let c = 0; c < channels; c++) data[c * size * size + i] = img[i * channels + c] / 127.5 - 1;
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
    // RGBA pixels of one image -> { codes: number[] (row-major codes.shape without the batch), uint8 }
    async encode(rgba, width, height) {
      const { data, uint8 } = preprocess(rgba, width, height, desc);
      const input = new ort.Tensor("float32", data, [1, desc.channels, size, size]);
      const out = await encoder.run({ [encoder.inputNames[0]]: input });
      const codes = Array.from(out[encoder.outputNames[0]].data, Number);
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
