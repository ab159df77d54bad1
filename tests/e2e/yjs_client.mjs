// A real Yjs client for the end-to-end tests: the stock y-websocket WebsocketProvider (with
// `ws` as its WebSocket) on one document, driven by the test over stdin/stdout, one JSON
// object a line each way.
//
//   node tests/e2e/yjs_client.mjs '{"url": "ws://127.0.0.1:PORT/ws/docs", "room": KEY, "token": T}'
//
// It prints {"event": "ready", "clientID": n} once the provider exists (connecting), then
// answers each command {"id": any, "cmd": name, ...} with {"id": same, ...} or
// {"id": same, "error": message}:
//   insert {index, text}       type text into the Y.Text `content` (one transaction); instead
//                              of index, {end: true} or {after: marker} (right after the
//                              marker's first occurrence): the place is found in the same
//                              turn as the edit, so no remote edit can move it in between
//   delete {index, length}     delete characters (one transaction); {after: marker} too
//   text                       -> {text}
//   awareness {state}          set the local awareness state (null: leave)
//   peers                      -> {states: {clientID: state}}: the other clients' states
//   status                     -> {status, connected, synced, opened, closes: [{code, reason}],
//                                  errors: [message], denied: [reason], clientID}
//   disconnect / connect       stop / start connecting (y-websocket's own calls)
//   exit                       destroy the provider (awareness left) and exit 0
// Node.js 20; packages from the repository's node_modules (package-lock.json).
import * as readline from 'node:readline'

import WebSocket from 'ws'
import { WebsocketProvider, messageAuth } from 'y-websocket'
import * as authProtocol from 'y-protocols/auth'
import * as Y from 'yjs'

const options = JSON.parse(process.argv[2] || '{}')
for (const name of ['url', 'room']) {
  if (typeof options[name] !== 'string' || !options[name]) {
    process.stderr.write(`yjs_client: option ${name} is required (a string)\n`)
    process.exit(2)
  }
}

const doc = new Y.Doc()
const text = doc.getText('content')
const closes = []
const errors = []
const denied = []
let opened = 0
let status = 'connecting'

const provider = new WebsocketProvider(options.url, options.room, doc, {
  WebSocketPolyfill: WebSocket,
  params: options.token ? { token: options.token } : {},
  disableBc: true,
  maxBackoffTime: options.maxBackoffTime ?? 1000
})
// y-websocket only logs a permission-denied auth message: keep it for the test to read.
provider.messageHandlers[messageAuth] = (_encoder, decoder) => {
  authProtocol.readAuthMessage(decoder, doc, (_doc, reason) => denied.push(reason))
}
provider.on('status', (event) => {
  status = event.status
  if (event.status === 'connected') opened += 1
})
provider.on('connection-close', (event) => {
  closes.push(event ? { code: event.code, reason: String(event.reason ?? '') } : { code: null, reason: 'no message for too long' })
})
provider.on('connection-error', (event) => {
  errors.push(String(event?.message ?? event?.error?.message ?? event?.type ?? 'error'))
})

function remoteStates () {
  const states = {}
  for (const [clientID, state] of provider.awareness.getStates()) {
    if (clientID !== doc.clientID) states[clientID] = state
  }
  return states
}

// Where an edit goes: {index}, {end: true} or {after: marker}, read from the text as it is now.
function position (command) {
  if (command.end === true) return text.length
  if (typeof command.after === 'string') {
    const found = text.toString().indexOf(command.after)
    if (found < 0) throw new Error(`after: ${JSON.stringify(command.after)} is not in the text`)
    return found + command.after.length
  }
  const index = requireInt(command, 'index')
  if (index > text.length) throw new Error(`index: ${index} is past the end (${text.length})`)
  return index
}

function requireInt (command, name) {
  const value = command[name]
  if (!Number.isInteger(value) || value < 0) throw new Error(`${name}: a non-negative integer, got ${JSON.stringify(value)}`)
  return value
}

const commands = {
  insert (command) {
    if (typeof command.text !== 'string') throw new Error('text: a string is required')
    const index = position(command)
    doc.transact(() => text.insert(index, command.text))
    return { length: text.length }
  },
  delete (command) {
    const index = position(command)
    const length = requireInt(command, 'length')
    if (index + length > text.length) throw new Error(`index + length: ${index + length} is past the end (${text.length})`)
    doc.transact(() => text.delete(index, length))
    return { length: text.length }
  },
  text () {
    return { text: text.toString() }
  },
  awareness (command) {
    provider.awareness.setLocalState(command.state ?? null)
    return {}
  },
  peers () {
    return { states: remoteStates() }
  },
  status () {
    return {
      status,
      connected: provider.wsconnected,
      synced: provider.synced,
      opened,
      closes,
      errors,
      denied,
      clientID: doc.clientID
    }
  },
  disconnect () {
    provider.disconnect()
    return {}
  },
  connect () {
    provider.connect()
    return {}
  },
  exit () {
    provider.destroy()
    setImmediate(() => process.exit(0))
    return {}
  }
}

function reply (message) {
  process.stdout.write(JSON.stringify(message) + '\n')
}

const lines = readline.createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (!line.trim()) return
  let command
  try {
    command = JSON.parse(line)
  } catch (error) {
    reply({ id: null, error: `not JSON: ${error.message}` })
    return
  }
  const handler = Object.hasOwn(commands, command.cmd) ? commands[command.cmd] : undefined
  if (!handler) {
    reply({ id: command.id ?? null, error: `cmd: unknown command ${JSON.stringify(command.cmd)}` })
    return
  }
  try {
    reply({ id: command.id ?? null, ...handler(command) })
  } catch (error) {
    reply({ id: command.id ?? null, error: error.message })
  }
})
// The test closing our stdin (or dying) ends the client too.
lines.on('close', () => {
  provider.destroy()
  process.exit(0)
})

reply({ event: 'ready', clientID: doc.clientID })
