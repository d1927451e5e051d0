// Shared by the tests against a real running sandboxd: SANDBOXD_URL, SANDBOXD_API_KEY and
// SANDBOXD_ADMIN_KEY (pool management) from the environment
// (test/e2e/test_operators_typescript_client.py starts the service and sets them, and
// SANDBOXD_MAX_FILE_BYTES to the service's limit).
import assert from "node:assert/strict";

import { SandboxdClient, SandboxdError } from "../dist/index.js";

export const baseUrl = process.env.SANDBOXD_URL;
const apiKey = process.env.SANDBOXD_API_KEY;
const adminKey = process.env.SANDBOXD_ADMIN_KEY;
export const skipUnlessLive = baseUrl && apiKey ? false : "SANDBOXD_URL is not set";

export function client(key = apiKey) {
  return new SandboxdClient({ baseUrl, apiKey: key, timeoutS: 60 });
}

/** A client with the admin key: pools are created, changed and deleted with it. */
export function admin() {
  assert.ok(adminKey, "SANDBOXD_ADMIN_KEY is not set");
  return client(adminKey);
}

export async function rejectsWith(promise, status, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof SandboxdError, `not a SandboxdError: ${error}`);
    assert.equal(error.status, status);
    assert.equal(error.code, code);
    assert.ok(error.requestId.length > 0, "no request id");
    assert.ok(error.detail.length > 0, "no message");
    return true;
  });
}
