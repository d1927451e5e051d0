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

export const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
// Extra seconds on top of the execution's own timeout: sandbox creation, queueing behind the
// chat's earlier messages.
const EXECUTE_SLACK_S = 60;
const DEFAULT_EXECUTION_TIMEOUT_S = 30;

export type Language = "python" | "javascript" | "shell" | (string & {});
export type SandboxStatus = "running" | "dead" | (string & {});

export interface Sandbox {
  chatId: string;
  sessionId: string;
  containerId: string;
  status: SandboxStatus;
  runtimeKind: string;
  createdAt: Date;
  expiresAt: Date;
  lastActivityAt: Date | null;
  maxExpiresAt: Date | null;
}

export interface ExecutionResult {
  stdout: string;
  stderr: string;
  /** null when the code did not finish (timed out). */
  exitCode: number | null;
  durationS: number;
  timedOut: boolean;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** The chat's sandbox was found dead and replaced before this ran. */
  sandboxReplaced: boolean;
  /** Variables and files of earlier messages are gone. */
  stateLost: boolean;
  sandbox: Sandbox;
}

/** A piece of output while the code runs. */
export interface OutputEvent {
  type: "output";
  stream: "stdout" | "stderr";
  data: string;
}

/** The last item of a stream. */
export interface ResultEvent {
  type: "result";
  result: ExecutionResult;
}

export type StreamItem = OutputEvent | ResultEvent;

export interface SandboxPage {
  items: Sandbox[];
  limit: number;
  offset: number;
  /** Offset of the next page; null on the last one. */
  nextOffset: number | null;
}

export interface ExecuteOptions {
  language?: Language;
  /** Seconds before the code is killed; default SANDBOXD_DEFAULT_TIMEOUT_S on the service. */
  timeoutS?: number;
  signal?: AbortSignal;
}

export interface ListOptions {
  status?: SandboxStatus;
  limit?: number;
  offset?: number;
}

export interface ClientOptions {
  baseUrl?: string;
  apiKey?: string;
  /** Seconds for calls other than execute (execute waits its own timeout plus a margin). */
  timeoutS?: number;
  /** Another fetch (a test double, a proxy agent); default: the global fetch. */
  fetch?: typeof fetch;
}

/** An error response: `status` (HTTP; 0 inside a stream), a stable `code`, a human `message`. */
export class SandboxdError extends Error {
  readonly status: number;
  readonly code: string;
  readonly requestId: string;
  /** The service's message as it sent it (`message` adds the status and code in front). */
  readonly detail: string;

  constructor(status: number, code: string, message: string, requestId = "") {
    super(`${status} ${code}: ${message}`);
    this.name = "SandboxdError";
    this.status = status;
    this.code = code;
    this.detail = message;
    this.requestId = requestId;
  }

  /** True for 429 and 503: the same request may succeed later. */
  get retryable(): boolean {
    return this.status === 429 || this.status === 503;
  }
}

type Json = Record<string, unknown>;

function time(value: unknown): Date | null {
  return typeof value === "string" ? new Date(value) : null;
}

export function sandboxFromJson(data: Json): Sandbox {
  return {
    chatId: String(data.chat_id),
    sessionId: String(data.session_id),
    containerId: String(data.container_id),
    status: String(data.status),
    runtimeKind: String(data.runtime_kind ?? ""),
    createdAt: new Date(String(data.created_at)),
    expiresAt: new Date(String(data.expires_at)),
    lastActivityAt: time(data.last_activity_at),
    maxExpiresAt: time(data.max_expires_at),
  };
}

export function resultFromJson(data: Json): ExecutionResult {
  return {
    stdout: String(data.stdout),
    stderr: String(data.stderr),
    exitCode: typeof data.exit_code === "number" ? data.exit_code : null,
    durationS: Number(data.duration_s),
    timedOut: Boolean(data.timed_out),
    stdoutTruncated: Boolean(data.stdout_truncated),
    stderrTruncated: Boolean(data.stderr_truncated),
    sandboxReplaced: Boolean(data.sandbox_replaced),
    stateLost: Boolean(data.state_lost),
    sandbox: sandboxFromJson(data.session as Json),
  };
}

/**
 * Server-sent events to stream items: `stdout`/`stderr` events become OutputEvents, `result` the
 * ResultEvent, and an `error` event (the service failed after the 200 went out) throws.
 */
export class SseParser {
  private event = "message";
  private data: string[] = [];

  constructor(private readonly requestId = "") {}

  /** One line without its line break; returns an item when the line completed an event. */
  feed(line: string): StreamItem | null {
    if (line.startsWith(":")) return null; // a comment (keep-alive)
    if (line !== "") {
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") this.event = value;
      else if (field === "data") this.data.push(value);
      return null;
    }
    if (this.data.length === 0) return null;
    const event = this.event;
    const data = JSON.parse(this.data.join("\n")) as Json;
    this.event = "message";
    this.data = [];
    if (event === "result") return { type: "result", result: resultFromJson(data) };
    if (event === "error") {
      throw new SandboxdError(0, String(data.code), String(data.message), this.requestId);
    }
    if (event === "stdout" || event === "stderr") {
      return { type: "output", stream: event, data: String(data.data) };
    }
    return null; // an event this client does not know yet
  }
}

async function* lines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffer.search(/\r\n|\r|\n/)) !== -1) {
        const width = buffer.startsWith("\r\n", newline) ? 2 : 1;
        // A lone \r at the end of a chunk may be the first half of \r\n: wait for more.
        if (width === 1 && buffer[newline] === "\r" && newline === buffer.length - 1) break;
        yield buffer.slice(0, newline);
        buffer = buffer.slice(newline + width);
      }
    }
    buffer += decoder.decode();
    if (buffer !== "") yield buffer;
    yield "";
  } finally {
    reader.releaseLock();
  }
}

async function errorFrom(response: Response): Promise<SandboxdError> {
  const requestId = response.headers.get("x-request-id") ?? "";
  const text = await response.text();
  try {
    const body = JSON.parse(text) as Json;
    if (typeof body.code === "string" && typeof body.message === "string") {
      return new SandboxdError(response.status, body.code, body.message, requestId);
    }
  } catch {
    // not JSON: fall through
  }
  return new SandboxdError(response.status, `http_${response.status}`, text.slice(0, 500), requestId);
}

function chat(chatId: string): string {
  return encodeURIComponent(chatId);
}

export class SandboxdClient {
  private readonly baseUrl: string;
  private readonly headers: Record<string, string>;
  private readonly timeoutS: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
    this.headers = options.apiKey ? { Authorization: `Bearer ${options.apiKey}` } : {};
    this.timeoutS = options.timeoutS ?? 30;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Run code in the chat's sandbox (created, reused, or replaced as needed). */
  async execute(chatId: string, code: string, options: ExecuteOptions = {}): Promise<ExecutionResult> {
    const response = await this.request("POST", `/v1/chats/${chat(chatId)}/executions`, {
      body: executeBody(code, options),
      timeoutS: executeTimeout(options.timeoutS),
      signal: options.signal,
    });
    return resultFromJson((await response.json()) as Json);
  }

  /** OutputEvents as the code prints, then one ResultEvent. */
  async *executeStream(
    chatId: string,
    code: string,
    options: ExecuteOptions = {},
  ): AsyncGenerator<StreamItem> {
    const response = await this.request("POST", `/v1/chats/${chat(chatId)}/executions`, {
      body: executeBody(code, options),
      timeoutS: executeTimeout(options.timeoutS),
      signal: options.signal,
      accept: "text/event-stream",
    });
    if (response.body === null) throw new SandboxdError(response.status, "empty_stream", "no body");
    const parser = new SseParser(response.headers.get("x-request-id") ?? "");
    for await (const line of lines(response.body)) {
      const item = parser.feed(line);
      if (item !== null) yield item;
    }
  }

  /** Create the chat's sandbox, or reuse its usable one. */
  async ensureSandbox(chatId: string): Promise<Sandbox> {
    const response = await this.request("PUT", `/v1/chats/${chat(chatId)}/sandbox`);
    return sandboxFromJson((await response.json()) as Json);
  }

  /** The chat's sandbox, or null when it has none. */
  async getSandbox(chatId: string): Promise<Sandbox | null> {
    const response = await this.request("GET", `/v1/chats/${chat(chatId)}/sandbox`, {
      allow404: true,
    });
    if (response.status === 404) {
      await response.body?.cancel();
      return null;
    }
    return sandboxFromJson((await response.json()) as Json);
  }

  /** Slide the idle deadline; throws SandboxdError(404, "sandbox_not_found") without a sandbox. */
  async renewSandbox(chatId: string): Promise<Sandbox> {
    const response = await this.request("POST", `/v1/chats/${chat(chatId)}/sandbox/renew`);
    return sandboxFromJson((await response.json()) as Json);
  }

  /** Stop the chat's sandbox and forget it; idempotent. */
  async destroySandbox(chatId: string): Promise<void> {
    const response = await this.request("DELETE", `/v1/chats/${chat(chatId)}/sandbox`);
    await response.body?.cancel();
  }

  /** Session records by creation time, one page. */
  async listSandboxes(options: ListOptions = {}): Promise<SandboxPage> {
    const query = new URLSearchParams({
      limit: String(options.limit ?? 100),
      offset: String(options.offset ?? 0),
    });
    if (options.status) query.set("status", options.status);
    const response = await this.request("GET", `/v1/sandboxes?${query.toString()}`);
    const data = (await response.json()) as Json;
    return {
      items: (data.items as Json[]).map(sandboxFromJson),
      limit: Number(data.limit),
      offset: Number(data.offset),
      nextOffset: typeof data.next_offset === "number" ? data.next_offset : null,
    };
  }

  /** True when the service and its database and runtime answer (/readyz). */
  async ready(): Promise<boolean> {
    try {
      const response = await this.fetchImpl(`${this.baseUrl}/readyz`, {
        signal: AbortSignal.timeout(this.timeoutS * 1000),
      });
      await response.body?.cancel();
      return response.status === 200;
    } catch {
      return false;
    }
  }

  private async request(
    method: string,
    path: string,
    options: {
      body?: Json;
      timeoutS?: number;
      signal?: AbortSignal | undefined;
      accept?: string;
      allow404?: boolean;
    } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { ...this.headers };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (options.accept !== undefined) headers.Accept = options.accept;
    const timeout = AbortSignal.timeout((options.timeoutS ?? this.timeoutS) * 1000);
    const init: RequestInit = {
      method,
      headers,
      signal: options.signal ? anySignal([options.signal, timeout]) : timeout,
    };
    if (options.body !== undefined) init.body = JSON.stringify(options.body);
    const response = await this.fetchImpl(`${this.baseUrl}${path}`, init);
    if (response.status >= 400 && !(options.allow404 && response.status === 404)) {
      throw await errorFrom(response);
    }
    return response;
  }
}

function executeBody(code: string, options: ExecuteOptions): Json {
  const body: Json = { code, language: options.language ?? "python" };
  if (options.timeoutS !== undefined) body.timeout_s = options.timeoutS;
  return body;
}

function executeTimeout(timeoutS: number | undefined): number {
  return (timeoutS ?? DEFAULT_EXECUTION_TIMEOUT_S) + EXECUTE_SLACK_S;
}

// AbortSignal.any is Node 20.3+; this is the same for Node 18.
function anySignal(signals: AbortSignal[]): AbortSignal {
  const controller = new AbortController();
  for (const signal of signals) {
    if (signal.aborted) {
      controller.abort(signal.reason);
      break;
    }
    signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  }
  return controller.signal;
}
