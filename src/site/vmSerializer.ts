/**
 * Runs work for one VM strictly one piece at a time (cycle commits, retention merges), while
 * different VMs proceed independently.
 */
export class VmSerializer {
  private readonly tails = new Map<string, Promise<unknown>>();

  run<T>(vmId: string, work: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(vmId) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    const tail = next.catch(() => undefined);
    this.tails.set(vmId, tail);
    void tail.then(() => {
      if (this.tails.get(vmId) === tail) this.tails.delete(vmId);
    });
    return next;
  }

  /** Resolves when everything queued so far for every VM has finished. */
  async idle(): Promise<void> {
    await Promise.all([...this.tails.values()]);
  }
}
