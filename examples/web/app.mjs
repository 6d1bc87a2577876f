// The page: load a vqkit tokenizer's two .onnx files, encode a picked or dropped image, show its code grid and
// its reconstruction. Query parameters: ?tokenizer=URL of the export folder (default tokenizer/), and
// ?image=URL of an image to encode at once. Only the .onnx files are read; their metadata says the rest.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { decodePng, isPng, openTokenizer } from "./vqkit.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page; one is plenty for small images

const params = new URLSearchParams(location.search);
const base = new URL(params.get("tokenizer") ?? "tokenizer/", location.href);
const status = document.getElementById("status");

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot fetch ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

// zlib, undone by the browser's DecompressionStream.
async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// An image file -> a decoded picture ({ width, height, bands, data }) as the tokenizer's description says.
// PNG is decoded by vqkit.mjs: a canvas would lose the colour under transparent pixels and 16-bit precision.
// Other formats (JPEG, WebP, ...) are decoded by the browser, EXIF orientation applied, with no colour
// management or premultiplication, so the values are the file's own (as Pillow reads them).
async function pictureOf(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  if (isPng(bytes)) return decodePng(bytes, inflate);
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image",
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  return { width: bitmap.width, height: bitmap.height, bands: 4, data: new Uint8Array(data.buffer) };
}

function draw(canvasId, rgba, size) {
  const canvas = document.getElementById(canvasId);
  canvas.width = canvas.height = size;
  canvas.getContext("2d").putImageData(new ImageData(rgba, size, size), 0, 0);
}

function showGrid(codes, shape, codebookSize) {
  const [h, w] = shape;
  const perCell = codes.length / (h * w);
  const table = document.getElementById("grid");
  table.replaceChildren();
  for (let i = 0; i < h; i++) {
    const row = table.insertRow();
    for (let j = 0; j < w; j++) {
      const cell = row.insertCell();
      const values = codes.slice((i * w + j) * perCell, (i * w + j + 1) * perCell);
      cell.textContent = values.join("/");
      cell.style.background = `hsl(${Math.round((360 * values[0]) / codebookSize)}, 70%, 80%)`;
    }
  }
  document.getElementById("grid-caption").textContent =
    `codes ${shape.join("x")} of ${codebookSize}`;
}

async function main() {
  const tok = await openTokenizer(
    ort,
    await fetchBytes(new URL("encoder.onnx", base)),
    await fetchBytes(new URL("decoder.onnx", base)),
    { executionProviders: ["wasm"] },
  );
  const { channels, image_size: size } = tok.desc;
  status.textContent = `tokenizer: ${channels}-channel ${size}x${size} images, ${tok.desc.codes.codebook_size} codes`;

  async function run(blob, name) {
    try {
      const picture = await pictureOf(blob);
      const { width, height } = picture;
      const { codes, shape, uint8 } = await tok.encode(picture);
      const shown = new Uint8ClampedArray(size * size * 4);
      for (let i = 0; i < size * size; i++) {
        for (let c = 0; c < 3; c++) shown[4 * i + c] = uint8[i * channels + (channels === 1 ? 0 : c)];
        shown[4 * i + 3] = 255;
      }
      draw("input", shown, size);
      showGrid(codes, shape, tok.desc.codes.codebook_size);
      draw("recon", await tok.decode(codes), size);
      document.getElementById("codes").textContent = JSON.stringify({ image: name, shape, codes });
      status.textContent = `encoded ${name} (${width}x${height})`;
      return { image: name, shape, codes };
    } catch (err) {
      status.textContent = `error: ${err.message}`;
      return { image: name, error: err.message };
    }
  }

  document.getElementById("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) run(file, file.name).then(() => (document.title = "done"));
  });
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) run(file, file.name).then(() => (document.title = "done"));
  });
  // ?image=URL (repeatable): encode each at once; every result goes into #results as JSON, for tests.
  const results = [];
  for (const image of params.getAll("image")) {
    results.push(await run(await (await fetch(new URL(image, location.href))).blob(), image));
  }
  document.getElementById("results").textContent = JSON.stringify(results);
  if (results.length) document.title = results.some((r) => r.error) ? "error" : "done";
}

main().catch((err) => {
  status.textContent = `error: ${err.message}`;
  document.title = "error";
});
