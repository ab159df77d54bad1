// Bundles the pinned third-party JavaScript into the static files (make assets). The
// output is committed: make run serves it without Node.js.
import { readFileSync } from "node:fs";
import { build } from "esbuild";

const chartVersion = JSON.parse(readFileSync("node_modules/chart.js/package.json", "utf8")).version;

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
