// spec/support/gcs/emulator.js — starts the firebase-tools Cloud Storage
// emulator in-process, without its Java security-rules runtime.
//
//   node emulator.js PORT FIREBASE_TOOLS_DIR
//
// FIREBASE_TOOLS_DIR holds node_modules/firebase-tools (installed by
// spec/support/gcs.lua). `firebase emulators:start` needs Java 21 and
// downloads the rules runtime jar on first use; neither is possible here.
// The GCS JSON API routes (/storage/v1, /upload/storage/v1, /b/...) go
// through the emulator's admin storage layer, which never consults rules,
// so the rules runtime and manager are replaced by no-ops. Blobs are kept
// under $TMPDIR/firebase/storage/blobs: the harness points TMPDIR into a
// per-instance directory. Prints "listening 127.0.0.1:PORT" once bound;
// SIGTERM/SIGINT stop it.
'use strict';

const path = require('path');

const [portArg, dir] = process.argv.slice(2);
const port = Number(portArg);
if (!dir || !Number.isInteger(port) || port <= 0) {
  console.error('usage: node emulator.js PORT FIREBASE_TOOLS_DIR');
  process.exit(2);
}

const lib = path.join(dir, 'node_modules', 'firebase-tools', 'lib', 'emulator');
const { StorageEmulator } = require(path.join(lib, 'storage'));
const { EmulatorRegistry } = require(path.join(lib, 'registry'));
const runtime = require(path.join(lib, 'storage', 'rules', 'runtime')).StorageRulesRuntime.prototype;

// No Java: the rules runtime never starts, and no ruleset is ever loaded.
runtime.start = async () => {};
runtime.stop = async () => {};
StorageEmulator.prototype.createRulesManager = () => ({
  start: async () => [],
  stop: async () => {},
  getRuleset: () => undefined,
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await EmulatorRegistry.stopAll().catch(() => {});
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

(async () => {
  const emulator = new StorageEmulator({
    projectId: 'demo-test', host: '127.0.0.1', port, rules: 'unused', auto_download: false,
  });
  await EmulatorRegistry.start(emulator);
  console.log(`listening 127.0.0.1:${port}`);
})().catch((err) => {
  console.error(`emulator.js: ${err && err.stack || err}`);
  process.exit(1);
});
