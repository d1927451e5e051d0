/**
 * Client of the sandboxd HTTP API, on the platform's fetch (Node 18+, Deno, Bun, browsers).
 * No runtime dependencies. The same surface as the Python client (clients/python):
 *
 *   import { SandboxdClient } from "@sandboxd/client";
 *   const client = new SandboxdClient({ baseUrl: "http://127.0.0.1:8080", apiKey: "..." });
 *   const result = await client.execute(chatId, "x = 41\nprint(x + 1)");
 *   console.log(result.stdout); // "42\n"
 *
 * Every error response throws SandboxdError (status, code, message, requestId); `retryable` is
 * true for 429 and 503. A timed-out execution is not an error: `result.timedOut` is true.
 */

export {
  type CapacityInput,
  type ClientOptions,
  DEFAULT_BASE_URL,
  type EnsureOptions,
  type ExecuteOptions,
  type FileOptions,
  type ListOptions,
  type PoolOptions,
  SandboxdClient,
} from "./client.js";
export { type ClientErrorCode, ERROR_CODES, type ErrorCode, SandboxdError } from "./errors.js";
export { type FileDownload, type FileSource, filePath } from "./files.js";
export {
  type CapacitySpec,
  type ChangedFile,
  type DisplayEvent,
  type ExecutionResult,
  type FileListing,
  type Language,
  type OutputEvent,
  type Pool,
  type ResultEvent,
  type RichOutput,
  type Sandbox,
  type SandboxPage,
  type SandboxStatus,
  type StoredFile,
  type StreamItem,
  type WorkspaceFile,
  resultFromJson,
  richOutputBytes,
  sandboxFromJson,
} from "./models.js";
export { Sha256 } from "./sha256.js";
export { SseParser } from "./sse.js";
