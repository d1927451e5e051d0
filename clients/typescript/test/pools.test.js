// Warm pools against a real running sandboxd (see live.js): create, list, get, a chat served from
// the pool, capacity change, delete, and the service's refusals.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";

import { admin, client, rejectsWith, skipUnlessLive } from "./live.js";

describe("warm pools", { skip: skipUnlessLive }, () => {
  test("create, fill, serve a chat, resize, delete", async () => {
    const name = `ts-${randomUUID().slice(0, 8)}`;
    const created = await admin().createPool(name, { bufferMin: 1, bufferMax: 1, poolMax: 3 });
    assert.equal(created.name, name);
    assert.deepEqual(created.environment, { language: "python", packages: [] });
    assert.deepEqual(created.capacitySpec, { bufferMin: 1, bufferMax: 1, poolMin: 0, poolMax: 3 });
    try {
      await rejectsWith(
        admin().createPool(name, { bufferMin: 0, bufferMax: 1, poolMax: 1 }),
        409,
        "pool_already_exists",
      );
      assert.ok((await client().listPools()).some((pool) => pool.name === name));

      // The bound only fails a pool that never fills (sandbox start-up on a loaded host).
      let pool = await client().getPool(name);
      for (let i = 0; pool.status.available < 1 && i < 600; i++) {
        await sleep(200);
        pool = await client().getPool(name);
      }
      assert.equal(pool.status.available, 1, JSON.stringify(pool));

      const chat = randomUUID();
      assert.equal((await client().execute(chat, "print('pooled')")).stdout, "pooled\n");
      assert.ok(
        (await client().getPool(name)).status.allocated >= 1,
        "the chat was not served from the pool",
      );
      await client().destroySandbox(chat);

      const resized = await admin().updatePool(name, {
        bufferMin: 0,
        bufferMax: 2,
        poolMax: 4,
        poolMin: 0,
      });
      assert.deepEqual(resized.capacitySpec, {
        bufferMin: 0,
        bufferMax: 2,
        poolMin: 0,
        poolMax: 4,
      });
      assert.ok(resized.status.revision > created.status.revision, JSON.stringify(resized.status));
      assert.deepEqual((await client().getPool(name)).capacitySpec, resized.capacitySpec);
    } finally {
      await admin().deletePool(name);
    }
    await rejectsWith(client().getPool(name), 404, "pool_not_found");
    assert.ok(!(await client().listPools()).some((pool) => pool.name === name));
  });

  test("the service's refusals", async () => {
    await rejectsWith(client().getPool("no-such-pool"), 404, "pool_not_found");
    await rejectsWith(admin().deletePool("no-such-pool"), 404, "pool_not_found");
    const capacity = { bufferMin: 0, bufferMax: 1, poolMax: 1 };
    await rejectsWith(admin().updatePool("no-such-pool", capacity), 404, "pool_not_found");
    await rejectsWith(
      admin().createPool("ts-bad", { bufferMin: 2, bufferMax: 1, poolMax: 3 }),
      422,
      "invalid_pool",
    );
    await rejectsWith(admin().createPool("Not_A_Label", capacity), 422, "invalid_request");
    // A tenant's key reads pools but cannot create, change or delete them.
    await rejectsWith(client().createPool("ts-tenant", capacity), 403, "admin_required");
    await rejectsWith(client().updatePool("no-such-pool", capacity), 403, "admin_required");
    await rejectsWith(client().deletePool("no-such-pool"), 403, "admin_required");
  });
});
