// The GraphQL-over-HTTP conformance audit of graphql-http (`serverAudits`)
// against the real server: every audit, MUST, SHOULD and MAY, has to pass.
//
// Run with `node --test tests/js/` after `npm ci` in tests/js, or with
// .ci/js-test, which does both.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { serverAudits } from 'graphql-http';
import { startServer } from './server.mjs';

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

test('every graphql-http server audit passes', async () => {
  const audits = serverAudits({ url: () => server.url });
  const failures = [];
  for (const { id, name, fn } of audits) {
    const result = await fn();
    if (result.status === 'ok') {
      console.log(`ok    ${id} ${name}`);
    } else {
      const detail = result.reason ?? '';
      console.log(`${result.status.padEnd(5)} ${id} ${name}: ${detail}`);
      failures.push(`${result.status} ${id} ${name}: ${detail}`);
    }
  }
  console.log(`${audits.length} audits, ${audits.length - failures.length} pass`);
  assert.ok(audits.length > 50, `expected the full audit list, got ${audits.length}`);
  assert.deepEqual(failures, [], `${failures.length} of ${audits.length} audits fail`);
});
