// node encode.mjs TOKENIZER_DIR IMAGE.png [IMAGE.png ...] > codes.json
// Reads only TOKENIZER_DIR/encoder.onnx and decoder.onnx (their own metadata says how to preprocess).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { PNG } from "pngjs";
import { openTokenizer } from "./vqkit.mjs";

const [folder, ...images] = process.argv.slice(2);
if (!folder || images.length === 0) {
  console.error("usage: node encode.mjs TOKENIZER_DIR IMAGE.png [IMAGE.png ...] > codes.json");
  process.exit(2);
}
const tok = await openTokenizer(
  ort,
  readFileSync(join(folder, "encoder.onnx")),
  readFileSync(join(folder, "decoder.onnx")),
);
const rows = [];
let shape = null;
for (const path of images) {
  const png = PNG.sync.read(readFileSync(path)); // RGBA, 8 bits per channel
  const out = await tok.encode(png.data, png.width, png.height);
  rows.push(out.codes);
  shape = out.shape;
}
process.stdout.write(JSON.stringify({ images, shape: [rows.length, ...shape], codes: rows }) + "\n");
