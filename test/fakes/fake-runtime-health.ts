import type { HealthCondition, PodCidrSetting, RuntimeHealth } from '../../src/runtime-info/runtime-info.js';

/** A RuntimeHealth whose answers a test sets; records calls and can fail once. */
export class FakeRuntimeHealth implements RuntimeHealth {
  runtime: HealthCondition = { ready: true };
  network: HealthCondition = { ready: true };
  calls = 0;
  #failNext: Error | undefined;

  failNextCheck(err: Error): void {
    this.#failNext = err;
  }

  async check(): Promise<{ runtime: HealthCondition; network: HealthCondition }> {
    this.calls++;
    const failure = this.#failNext;
    if (failure !== undefined) {
      this.#failNext = undefined;
      throw failure;
    }
    return { runtime: { ...this.runtime }, network: { ...this.network } };
  }
}

/** Keeps the pod CIDR in memory and records every set. */
export class FakePodCidrSetting implements PodCidrSetting {
  value = '';
  sets: string[] = [];

  get(): string {
    return this.value;
  }

  set(cidr: string): void {
    this.sets.push(cidr);
    this.value = cidr;
  }
}
