/**
 * Base of every error qreplica throws on purpose. Each subclass has a literal `code`, so callers
 * can `switch (err.code)` or use `instanceof`; the underlying failure travels in `cause`.
 */
export abstract class QreplicaError extends Error {
  abstract readonly code: string;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
