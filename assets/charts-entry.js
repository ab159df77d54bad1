// The chart library the admin's pages draw with (Chart.js, pinned in package.json), bundled
// by esbuild (assets/build.mjs) into notifications/static/notifications/vendor/chart.js.
export { Chart } from "chart.js/auto";
