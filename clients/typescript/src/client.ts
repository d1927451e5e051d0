/**
 * SandboxdClient: every call of the HTTP API as one method. The requests themselves are made by
 * Http (http.ts); bodies, downloads and stream parsing live in files.ts and sse.ts.
 */

import { SandboxdError } from "./errors.js";
import { type FileDownload, type FileSource, download, filePath, uploadBody } from "./files.js";
import { Http } from "./http.js";
import {
  type CapacitySpec,
  type ExecutionResult,
  type FileListing,
  type Json,
  type Language,
  type Pool,
  type Sandbox,
  type SandboxPage,
  type SandboxStatus,
  type StoredFile,
  type StreamItem,
  listingFromJson,
  pageFromJson,
  poolFromJson,
  resultFromJson,
  sandboxFromJson,
  storedFromJson,
} from "./models.js";
import { SseParser, lines } from "./sse.js";

export const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
// Extra seconds on top of the execution's own timeout: sandbox creation, package installs,
// queueing behind the chat's earlier messages.
const EXECUTE_SLACK_S = 60;
const DEFAULT_EXECUTION_TIMEOUT_S = 30;
// Files stream for as long as they take, up to this (a 100 MiB default limit on slow links).
const FILE_TIMEOUT_S = 600;

export interface ClientOptions {
  baseUrl?: string;
  apiKey?: string;
  /** Seconds for calls other than execute and files (those wait longer). */
  timeoutS?: number;
  /** Another fetch (a test double, a proxy agent); default: the global fetch. */
  fetch?: typeof fetch;
}

export interface ExecuteOptions {
  language?: Language;
  /** Seconds before the code is killed; default SANDBOXD_DEFAULT_TIMEOUT_S on the service. */
  timeoutS?: number;
  /** Requirements the sandbox must have for `language` (pandas>=2.0; npm: name@version). */
  packages?: string[];
  signal?: AbortSignal;
}

export interface EnsureOptions {
  /** Installed into a running sandbox, keeping its state; a new one starts with them. */
  packages?: string[];
  /** The language the packages are for. */
  language?: Language;
}

export interface ListOptions {
  status?: SandboxStatus;
  limit?: number;
  offset?: number;
}

export interface FileOptions {
  /** Seconds for the whole transfer (default 600). */
  timeoutS?: number;
  signal?: AbortSignal;
}

/** A capacitySpec; poolMin defaults to 0. */
export type CapacityInput = Omit<CapacitySpec, "poolMin"> & { poolMin?: number };

export interface PoolOptions {
  language?: Language;
  packages?: string[];
}

function chat(chatId: string): string {
  return encodeURIComponent(chatId);
}

function pool(name: string): string {
  return `/v1/pools/${encodeURIComponent(name)}`;
}

function capacity(spec: CapacityInput): CapacitySpec {
  return {
    bufferMin: spec.bufferMin,
    bufferMax: spec.bufferMax,
    poolMin: spec.poolMin ?? 0,
    poolMax: spec.poolMax,
  };
}

export class SandboxdClient {
  private readonly http: Http;

  constructor(options: ClientOptions = {}) {
    this.http = new Http(
      options.baseUrl ?? DEFAULT_BASE_URL,
      options.apiKey,
      options.timeoutS ?? 30,
      options.fetch ?? globalThis.fetch.bind(globalThis),
    );
  }

  // -- executions ---------------------------------------------------------------------------

  /** Run code in the chat's sandbox (created, reused, or replaced as needed). */
  async execute(
    chatId: string,
    code: string,
    options: ExecuteOptions = {},
  ): Promise<ExecutionResult> {
    return resultFromJson(
      await this.http.json("POST", executions(chatId), executeRequest(code, options)),
    );
  }

  /** OutputEvents as the code prints, DisplayEvents as it displays, then one ResultEvent. */
  async *executeStream(
    chatId: string,
    code: string,
    options: ExecuteOptions = {},
  ): AsyncGenerator<StreamItem> {
    const response = await this.http.request("POST", executions(chatId), {
      ...executeRequest(code, options),
      accept: "text/event-stream",
    });
    if (response.body === null) throw new SandboxdError(response.status, "empty_stream", "no body");
    const parser = new SseParser(response.headers.get("x-request-id") ?? "");
    for await (const line of lines(response.body)) {
      const item = parser.feed(line);
      if (item !== null) yield item;
    }
  }

  // -- the chat's sandbox -------------------------------------------------------------------

  /** Create the chat's sandbox, or reuse its usable one; `packages` it must have. */
  async ensureSandbox(chatId: string, options: EnsureOptions = {}): Promise<Sandbox> {
    const packages = options.packages ?? [];
    const json =
      packages.length > 0 ? { packages, language: options.language ?? "python" } : undefined;
    return sandboxFromJson(
      await this.http.json("PUT", `/v1/chats/${chat(chatId)}/sandbox`, { json }),
    );
  }

  /** The chat's sandbox, or null when it has none. */
  async getSandbox(chatId: string): Promise<Sandbox | null> {
    const response = await this.http.request("GET", `/v1/chats/${chat(chatId)}/sandbox`, {
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
    return sandboxFromJson(await this.http.json("POST", `/v1/chats/${chat(chatId)}/sandbox/renew`));
  }

  /** Stop the chat's sandbox and forget it; idempotent. */
  async destroySandbox(chatId: string): Promise<void> {
    await this.http.discard("DELETE", `/v1/chats/${chat(chatId)}/sandbox`);
  }

  /** Session records by creation time, one page. */
  async listSandboxes(options: ListOptions = {}): Promise<SandboxPage> {
    const query = new URLSearchParams({
      limit: String(options.limit ?? 100),
      offset: String(options.offset ?? 0),
    });
    if (options.status) query.set("status", options.status);
    return pageFromJson(await this.http.json("GET", `/v1/sandboxes?${query.toString()}`));
  }

  // -- workspace files ----------------------------------------------------------------------

  /** Write a file into the chat's workspace (its sandbox is created if needed); atomic. */
  async uploadFile(
    chatId: string,
    path: string,
    source: FileSource,
    options: FileOptions = {},
  ): Promise<StoredFile> {
    const body = uploadBody(source);
    return storedFromJson(
      await this.http.json("PUT", filePath(chatId, path), fileRequest(options, body)),
    );
  }

  /** A file of the workspace as a stream (see FileDownload); 404 file_not_found without it. */
  async downloadFile(
    chatId: string,
    path: string,
    options: FileOptions = {},
  ): Promise<FileDownload> {
    const response = await this.http.request("GET", filePath(chatId, path), fileRequest(options));
    return download(path, response);
  }

  /** A file of the workspace as bytes, its SHA-256 checked. */
  async readFile(chatId: string, path: string, options: FileOptions = {}): Promise<Uint8Array> {
    return (await this.downloadFile(chatId, path, options)).bytes();
  }

  /** Regular files under `prefix` (a path prefix, "" for all), at most 5000. */
  async listFiles(chatId: string, options: { prefix?: string } = {}): Promise<FileListing> {
    const query = new URLSearchParams({ prefix: options.prefix ?? "" });
    return listingFromJson(
      await this.http.json("GET", `/v1/chats/${chat(chatId)}/files?${query.toString()}`),
    );
  }

  async deleteFile(chatId: string, path: string): Promise<void> {
    await this.http.discard("DELETE", filePath(chatId, path));
  }

  // -- warm pools ---------------------------------------------------------------------------

  async listPools(): Promise<Pool[]> {
    const data = await this.http.json("GET", "/v1/pools");
    return (data.items as Json[]).map(poolFromJson);
  }

  /** 404 pool_not_found when there is no such pool. */
  async getPool(name: string): Promise<Pool> {
    return poolFromJson(await this.http.json("GET", pool(name)));
  }

  /**
   * Needs an admin key (SANDBOXD_ADMIN_KEYS), as updatePool and deletePool: 403 admin_required
   * otherwise. 409 pool_already_exists when the name is taken; 422 invalid_pool for a bad
   * capacity.
   */
  async createPool(name: string, spec: CapacityInput, options: PoolOptions = {}): Promise<Pool> {
    const json = {
      name,
      environment: { language: options.language ?? "python", packages: options.packages ?? [] },
      capacitySpec: capacity(spec),
    };
    return poolFromJson(await this.http.json("POST", "/v1/pools", { json }));
  }

  async updatePool(name: string, spec: CapacityInput): Promise<Pool> {
    const json = { capacitySpec: capacity(spec) };
    return poolFromJson(await this.http.json("PUT", pool(name), { json }));
  }

  /** Its idle members are destroyed; chats holding members keep them. */
  async deletePool(name: string): Promise<void> {
    await this.http.discard("DELETE", pool(name));
  }

  // -- health -------------------------------------------------------------------------------

  /** True when the service and its database and runtime answer (/readyz). */
  async ready(): Promise<boolean> {
    try {
      const response = await this.http.fetch(`${this.http.baseUrl}/readyz`, {
        signal: AbortSignal.timeout(this.http.timeoutS * 1000),
      });
      await response.body?.cancel();
      return response.status === 200;
    } catch {
      return false;
    }
  }
}

function executions(chatId: string): string {
  return `/v1/chats/${chat(chatId)}/executions`;
}

function executeRequest(code: string, options: ExecuteOptions) {
  const json: Json = { code, language: options.language ?? "python" };
  if (options.timeoutS !== undefined) json.timeout_s = options.timeoutS;
  if (options.packages !== undefined && options.packages.length > 0)
    json.packages = options.packages;
  return {
    json,
    timeoutS: (options.timeoutS ?? DEFAULT_EXECUTION_TIMEOUT_S) + EXECUTE_SLACK_S,
    signal: options.signal,
  };
}

function fileRequest(options: FileOptions, body?: BodyInit) {
  return { body, timeoutS: options.timeoutS ?? FILE_TIMEOUT_S, signal: options.signal };
}
