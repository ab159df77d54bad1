// Bundles the pinned third-party JavaScript into the static files (make assets). The
// output is committed: make run serves it without Node.js.
//
// The editor bundle's banner carries a hash of its entry, this script and package-lock.json
// (tests/collaboration/test_page.py recomputes it): a change to any of them that was not
// rebuilt fails that test instead of shipping a stale bundle.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

function versionOf(name) {
  return JSON.parse(readFileSync(`node_modules/${name}/package.json`, "utf8")).version;
}

const chartVersion = versionOf("chart.js");

await build({
  entryPoints: ["assets/charts-entry.js"],
  bundle: true,
  format: "esm",
  minify: true,
  target: ["es2020"],
  legalComments: "eof",
  banner: { js: `/* Chart.js ${chartVersion} (MIT), bundled by assets/build.mjs; rebuild with make assets. */` },
  outfile: "notifications/static/notifications/vendor/chart.js",
});
console.log(`notifications/static/notifications/vendor/chart.js: Chart.js ${chartVersion}`);

// --- the collaborative editor (collaboration/templates/collaboration/document.html) ---

const COLLAB_ENTRY = "assets/collab-entry.js";
const COLLAB_OUT = "collaboration/static/collaboration/vendor/collab.js";
const COLLAB_PACKAGES = [
  "yjs",
  "y-websocket",
  "y-protocols",
  "y-prosemirror",
  "@tiptap/core",
  "@tiptap/starter-kit",
  "@tiptap/extension-collaboration",
  "@tiptap/extension-collaboration-cursor",
  "codemirror",
  "@codemirror/state",
  "@codemirror/view",
  "y-codemirror.next",
  "diff",
];

const sourcesHash = createHash("sha256")
  .update(readFileSync(COLLAB_ENTRY))
  .update(readFileSync("assets/build.mjs"))
  .update(readFileSync("package-lock.json"))
  .digest("hex");
const versions = COLLAB_PACKAGES.map((name) => `${name} ${versionOf(name)}`).join(", ");

const collab = await build({
  entryPoints: [COLLAB_ENTRY],
  bundle: true,
  format: "esm",
  minify: true,
  target: ["es2020"],
  legalComments: "eof",
  metafile: true,
  banner: {
    js:
      `/* Collaborative editor bundle: ${versions} (MIT; diff BSD-3-Clause). ` +
      `Bundled by assets/build.mjs from ${COLLAB_ENTRY}; rebuild with make assets. ` +
      `sources-sha256: ${sourcesHash} */`,
  },
  outfile: COLLAB_OUT,
});

// Two copies of Yjs (or of ProseMirror's model, or CodeMirror's state) in one page break
// the editors in ways that are hard to see: "Unexpected content type", lost bindings.
const inputs = Object.keys(collab.metafile.inputs);
for (const name of ["yjs", "prosemirror-model", "prosemirror-state", "@codemirror/state", "lib0"]) {
  const roots = new Set(
    inputs
      .map((path) => path.match(new RegExp(`^(.*node_modules/${name.replace("/", "\\/")})/`)))
      .filter(Boolean)
      .map((match) => match[1]),
  );
  if (roots.size > 1) {
    throw new Error(`${COLLAB_OUT} holds ${roots.size} copies of ${name}: ${[...roots].join(", ")}`);
  }
}
const bytes = collab.metafile.outputs[COLLAB_OUT].bytes;
console.log(`${COLLAB_OUT}: ${(bytes / 1024).toFixed(0)} KiB; ${versions}`);

// --- the IoT page's charts (iot/templates/iot/devices.html) ---
//
// Its banner carries the same kind of hash (tests/iot/test_page.py recomputes it).

const IOT_ENTRY = "assets/iot-entry.js";
const IOT_OUT = "iot/static/iot/vendor/iot.js";
const IOT_CSS_OUT = "iot/static/iot/vendor/uPlot.min.css";
const uplotVersion = versionOf("uplot");
const iotHash = createHash("sha256")
  .update(readFileSync(IOT_ENTRY))
  .update(readFileSync("assets/build.mjs"))
  .update(readFileSync("package-lock.json"))
  .digest("hex");

await build({
  entryPoints: [IOT_ENTRY],
  bundle: true,
  format: "esm",
  minify: true,
  target: ["es2020"],
  legalComments: "eof",
  banner: {
    js:
      `/* IoT page bundle: uplot ${uplotVersion} (MIT). ` +
      `Bundled by assets/build.mjs from ${IOT_ENTRY}; rebuild with make assets. ` +
      `sources-sha256: ${iotHash} */`,
  },
  outfile: IOT_OUT,
});
writeFileSync(
  IOT_CSS_OUT,
  `/* uPlot ${uplotVersion} (MIT) stylesheet, copied by assets/build.mjs; rebuild with make assets. */\n` +
    readFileSync("node_modules/uplot/dist/uPlot.min.css", "utf8"),
);
console.log(`${IOT_OUT}, ${IOT_CSS_OUT}: uplot ${uplotVersion}`);

// --- the live page's player (streaming/templates/streaming/live.html) ---
//
// Its banner carries the same kind of hash; the worker that transmuxes off the main thread
// is copied beside it (the page passes its address as hls.js's workerPath).

const HLS_ENTRY = "assets/hls-entry.js";
const HLS_OUT = "streaming/static/streaming/vendor/hls.js";
const HLS_WORKER_OUT = "streaming/static/streaming/vendor/hls.worker.js";
const hlsVersion = versionOf("hls.js");
const hlsHash = createHash("sha256")
  .update(readFileSync(HLS_ENTRY))
  .update(readFileSync("assets/build.mjs"))
  .update(readFileSync("package-lock.json"))
  .digest("hex");

await build({
  entryPoints: [HLS_ENTRY],
  bundle: true,
  format: "esm",
  minify: true,
  target: ["es2020"],
  legalComments: "eof",
  banner: {
    js:
      `/* Live page player: hls.js ${hlsVersion} (Apache-2.0), light build. ` +
      `Bundled by assets/build.mjs from ${HLS_ENTRY}; rebuild with make assets. ` +
      `sources-sha256: ${hlsHash} */`,
  },
  outfile: HLS_OUT,
});
writeFileSync(
  HLS_WORKER_OUT,
  `/* hls.js ${hlsVersion} (Apache-2.0) transmuxing worker, copied by assets/build.mjs; rebuild with make assets. */\n` +
    readFileSync("node_modules/hls.js/dist/hls.worker.js", "utf8"),
);
console.log(`${HLS_OUT}, ${HLS_WORKER_OUT}: hls.js ${hlsVersion}`);
