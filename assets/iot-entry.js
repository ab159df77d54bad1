// The chart library of the IoT page (/iot/): uPlot (pinned in package.json), bundled by
// assets/build.mjs into iot/static/iot/vendor/iot.js, with its stylesheet copied beside it
// (iot/static/iot/vendor/uPlot.min.css). uPlot draws tens of thousands of points on a
// canvas and zooms natively on the x axis, which a live time series needs.
export { default as uPlot } from "uplot";
