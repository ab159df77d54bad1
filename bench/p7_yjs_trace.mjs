// P7's baseline and the writer's updates: an editing trace applied to a local Yjs document
// with no server, one transaction per operation as an editor makes them.
//
//   node bench/p7_yjs_trace.mjs TRACE.json UPDATES.bin
//
// TRACE.json: {"operations": [[position, deleted, inserted], ...], "final": text}.
// Writes every update the document emitted to UPDATES.bin (a 4-byte big-endian length, then
// the update, for each) and prints one JSON line: the seconds the trace took to apply
// (the baseline), the seconds a second document took to apply all the updates (what a
// peer does), their count and bytes, the encoded state's size, its state vector
// ([[client, clock]]), and whether the text came out as the trace says. Yjs from the repository's node_modules (package-lock.json).
import fs from 'node:fs'
import { performance } from 'node:perf_hooks'

import * as Y from 'yjs'

const [tracePath, updatesPath] = process.argv.slice(2)
if (!tracePath || !updatesPath) {
  process.stderr.write('usage: node bench/p7_yjs_trace.mjs TRACE.json UPDATES.bin\n')
  process.exit(2)
}
const trace = JSON.parse(fs.readFileSync(tracePath, 'utf8'))

const doc = new Y.Doc()
const text = doc.getText('content')
const updates = []
doc.on('update', (update) => updates.push(update))
let started = performance.now()
for (const [position, deleted, inserted] of trace.operations) {
  if (deleted) text.delete(position, deleted)
  if (inserted) text.insert(position, inserted)
}
const applySeconds = (performance.now() - started) / 1000

const peer = new Y.Doc()
started = performance.now()
for (const update of updates) Y.applyUpdate(peer, update)
const peerSeconds = (performance.now() - started) / 1000

let bytes = 0
for (const update of updates) bytes += update.length
const out = Buffer.allocUnsafe(bytes + 4 * updates.length)
let at = 0
for (const update of updates) {
  out.writeUInt32BE(update.length, at)
  out.set(update, at + 4)
  at += 4 + update.length
}
fs.writeFileSync(updatesPath, out)

process.stdout.write(JSON.stringify({
  apply_seconds: applySeconds,
  peer_apply_seconds: peerSeconds,
  updates: updates.length,
  update_bytes: bytes,
  state_bytes: Y.encodeStateAsUpdate(doc).length,
  state_vector: Array.from(Y.decodeStateVector(Y.encodeStateVector(doc)).entries()),
  text_matches: text.toString() === trace.final && peer.getText('content').toString() === trace.final,
  yjs: JSON.parse(fs.readFileSync(new URL('../node_modules/yjs/package.json', import.meta.url), 'utf8')).version
}) + '\n')
