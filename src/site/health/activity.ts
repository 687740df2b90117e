/**
 * When each VM's primary agent was last heard from (Hello, any stream message, the stream's end).
 * In memory only: a message every few seconds per VM is far too many ledger events, and after a
 * restart "not heard since the site started" is the truth (health measures silence from then).
 */
export class AgentActivity {
  private readonly lastAt = new Map<string, number>();
  readonly since: number;

  constructor(private readonly clock: () => number = Date.now) {
    this.since = clock();
  }

  touch(vmId: string): void {
    this.lastAt.set(vmId, this.clock());
  }

  lastActivityAt(vmId: string): number | undefined {
    return this.lastAt.get(vmId);
  }
}
