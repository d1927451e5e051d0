/** What the API returns, in camelCase, and the converters from its JSON (snake_case). */

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
  /** Extra packages it has (npm ones prefixed "npm:"). */
  packages: string[];
}

/** A displayed value: the last expression, a figure, a table. */
export interface RichOutput {
  /** text/plain, text/html, image/png, image/svg+xml, ... */
  mimeType: string;
  /** The content as sent: base64 when `encoding` is "base64" (binary types), else the text. */
  data: string;
  encoding: "base64" | "utf-8" | (string & {});
}

/** A workspace file the execution created or changed. */
export interface ChangedFile {
  path: string;
  size: number;
}

export interface ExecutionResult {
  stdout: string;
  stderr: string;
  /** null when the code did not finish (timed out). */
  exitCode: number | null;
  /** Exit code 0 and not timed out. */
  succeeded: boolean;
  durationS: number;
  timedOut: boolean;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** The chat's sandbox was found dead and replaced before this ran. */
  sandboxReplaced: boolean;
  /** Variables and files of earlier messages are gone. */
  stateLost: boolean;
  /** Rich outputs (last expression, figures, tables) in order. */
  outputs: RichOutput[];
  outputsTruncated: boolean;
  changedFiles: ChangedFile[];
  changedFilesTruncated: boolean;
  sandbox: Sandbox;
}

/** A piece of output while the code runs. */
export interface OutputEvent {
  type: "output";
  stream: "stdout" | "stderr";
  data: string;
}

/** A rich output as it is displayed (it is in the result's `outputs` too). */
export interface DisplayEvent {
  type: "display";
  output: RichOutput;
}

/** The last item of a stream. */
export interface ResultEvent {
  type: "result";
  result: ExecutionResult;
}

export type StreamItem = OutputEvent | DisplayEvent | ResultEvent;

export interface SandboxPage {
  items: Sandbox[];
  limit: number;
  offset: number;
  /** Offset of the next page; null on the last one. */
  nextOffset: number | null;
}

/** A file as stored by an upload. */
export interface StoredFile {
  path: string;
  size: number;
  sha256: string;
}

export interface WorkspaceFile {
  path: string;
  size: number;
  modifiedAt: Date;
}

export interface FileListing {
  files: WorkspaceFile[];
  /** More files matched than the service lists (5000). */
  truncated: boolean;
}

/** OpenSandbox's capacitySpec: idle members kept between bufferMin and bufferMax, all members
 * between poolMin and poolMax. */
export interface CapacitySpec {
  bufferMin: number;
  bufferMax: number;
  poolMin: number;
  poolMax: number;
}

export interface Pool {
  name: string;
  environment: { language: Language; packages: string[] };
  capacitySpec: CapacitySpec;
  /** This replica's members: `available` idle ones, `allocated` handed to chats. */
  status: { total: number; allocated: number; available: number; revision: number };
}

export type Json = Record<string, unknown>;

function time(value: unknown): Date | null {
  return typeof value === "string" ? new Date(value) : null;
}

function list(value: unknown): Json[] {
  return Array.isArray(value) ? (value as Json[]) : [];
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
    packages: Array.isArray(data.packages) ? data.packages.map(String) : [],
  };
}

export function richOutputFromJson(data: Json): RichOutput {
  return {
    mimeType: String(data.mime_type),
    data: String(data.data),
    encoding: String(data.encoding ?? "utf-8"),
  };
}

/** A rich output's content as bytes (a PNG's, for image/png). */
export function richOutputBytes(output: RichOutput): Uint8Array {
  if (output.encoding !== "base64") return new TextEncoder().encode(output.data);
  const binary = atob(output.data);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function resultFromJson(data: Json): ExecutionResult {
  return {
    stdout: String(data.stdout),
    stderr: String(data.stderr),
    exitCode: typeof data.exit_code === "number" ? data.exit_code : null,
    succeeded: data.exit_code === 0 && !data.timed_out,
    durationS: Number(data.duration_s),
    timedOut: Boolean(data.timed_out),
    stdoutTruncated: Boolean(data.stdout_truncated),
    stderrTruncated: Boolean(data.stderr_truncated),
    sandboxReplaced: Boolean(data.sandbox_replaced),
    stateLost: Boolean(data.state_lost),
    outputs: list(data.outputs).map(richOutputFromJson),
    outputsTruncated: Boolean(data.outputs_truncated),
    changedFiles: list(data.changed_files).map((f) => ({
      path: String(f.path),
      size: Number(f.size),
    })),
    changedFilesTruncated: Boolean(data.changed_files_truncated),
    sandbox: sandboxFromJson(data.session as Json),
  };
}

export function pageFromJson(data: Json): SandboxPage {
  return {
    items: list(data.items).map(sandboxFromJson),
    limit: Number(data.limit),
    offset: Number(data.offset),
    nextOffset: typeof data.next_offset === "number" ? data.next_offset : null,
  };
}

export function storedFromJson(data: Json): StoredFile {
  return { path: String(data.path), size: Number(data.size), sha256: String(data.sha256) };
}

export function listingFromJson(data: Json): FileListing {
  return {
    files: list(data.files).map((f) => ({
      path: String(f.path),
      size: Number(f.size),
      modifiedAt: new Date(String(f.modified_at)),
    })),
    truncated: Boolean(data.truncated),
  };
}

export function poolFromJson(data: Json): Pool {
  const environment = data.environment as Json;
  const spec = data.capacitySpec as Json;
  const status = data.status as Json;
  return {
    name: String(data.name),
    environment: {
      language: String(environment.language),
      packages: Array.isArray(environment.packages) ? environment.packages.map(String) : [],
    },
    capacitySpec: {
      bufferMin: Number(spec.bufferMin),
      bufferMax: Number(spec.bufferMax),
      poolMin: Number(spec.poolMin),
      poolMax: Number(spec.poolMax),
    },
    status: {
      total: Number(status.total),
      allocated: Number(status.allocated),
      available: Number(status.available),
      revision: Number(status.revision),
    },
  };
}
