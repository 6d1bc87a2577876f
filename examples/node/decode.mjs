// node decode.mjs TOKENIZER_DIR codes.json OUT_DIR   (codes.json as encode.mjs writes it)
// Writes OUT_DIR/000000.png, 000001.png, ... ; reads only the two .onnx files of TOKENIZER_DIR.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { PNG } from "pngjs";
import { openTokenizer } from "./vqkit.mjs";

const [folder, codesFile, outDir] = process.argv.slice(2);
if (!folder || !codesFile || !outDir) {
  console.error("usage: node decode.mjs TOKENIZER_DIR codes.json OUT_DIR");
  process.exit(2);
}
const tok = await openTokenizer(
  ort,
  readFileSync(join(folder, "encoder.onnx")),
  readFileSync(join(folder, "decoder.onnx")),
);
const { codes } = JSON.parse(readFileSync(codesFile, "utf8"));
mkdirSync(outDir, { recursive: true });
const size = tok.desc.image_size;
for (const [i, row] of codes.entries()) {
  const png = new PNG({ width: size, height: size });
  png.data = Buffer.from(await tok.decode(row.flat(Infinity)));
  writeFileSync(join(outDir, `${String(i).padStart(6, "0")}.png`), PNG.sync.write(png));
}
console.error(`decoded ${codes.length} images -> ${outDir}/`);
