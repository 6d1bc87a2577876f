// node encode.mjs TOKENIZER_DIR IMAGE [IMAGE ...] > codes.json   (PNG or JPEG images)
// Reads only TOKENIZER_DIR/encoder.onnx and decoder.onnx (their own metadata says how to preprocess).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { readPicture } from "./picture.mjs";
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
  const out = await tok.encode(await readPicture(path)); // PNG or JPEG, decoded as the graph's metadata says
  rows.push(out.codes);
  shape = out.shape;
}
process.stdout.write(JSON.stringify({ images, shape: [rows.length, ...shape], codes: rows }) + "\n");
