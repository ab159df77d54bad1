// The player of the live page (/live/{key}/, streaming/templates/streaming/live.html):
// hls.js (pinned in package.json: 1.7.4, Apache-2.0), bundled by assets/build.mjs into
// streaming/static/streaming/vendor/hls.js, with its transmuxing worker copied beside it
// (streaming/static/streaming/vendor/hls.worker.js; an ES module build cannot start the
// worker inline). The light build: the ladder is plain HLS with muxed audio, so subtitles,
// alternate audio tracks and DRM are not needed.
export { default as Hls } from "hls.js/light";
