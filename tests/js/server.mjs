// Starts the real talus-tally binary for the JavaScript tests: in memory, on
// 127.0.0.1 port 0, and resolves with its origin once it logs "listening on".
//
//   TALUS_BIN   server binary (default: target/debug/talus-tally)
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The server binary: TALUS_BIN, else the debug build of this checkout. */
export function serverBinary() {
  const binary = path.resolve(repo, process.env.TALUS_BIN ?? 'target/debug/talus-tally');
  if (!existsSync(binary)) {
    throw new Error(`no server binary at ${binary}: run \`cargo build\` or set TALUS_BIN`);
  }
  return binary;
}

/**
 * A running server: `{ origin, url, stop() }`, where `url` is its GraphQL
 * endpoint. `args` are extra command-line flags.
 */
export function startServer(args = []) {
  const binary = serverBinary();
  const child = spawn(binary, ['serve', '--addr', '127.0.0.1:0', '--in-memory', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  let output = '';
  let started = false;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`${binary} did not log "listening on" within 30 s:\n${output}`));
    }, 30_000);
    const onOutput = (chunk) => {
      // Keep reading even once started: a full pipe would block the server.
      if (output.length > 100_000) return;
      output += chunk;
      const match = output
        .replace(/\x1b\[[0-9;]*m/g, '')
        .match(/listening on http:\/\/([\d.]+):(\d+)/);
      if (match && !started) {
        started = true;
        clearTimeout(timer);
        const origin = `http://${match[1]}:${match[2]}`;
        resolve({
          origin,
          url: `${origin}/graphql`,
          output: () => output,
          stop: () =>
            new Promise((done) => {
              if (child.exitCode !== null || child.signalCode !== null) return done();
              child.once('exit', () => done());
              child.kill('SIGTERM');
            }),
        });
      }
    };
    child.stdout.on('data', onOutput);
    child.stderr.on('data', onOutput);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${binary}: ${error.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (!started) reject(new Error(`${binary} exited (${code ?? signal}) before listening:\n${output}`));
    });
  });
}
