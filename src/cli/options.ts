import { InvalidArgumentError } from "commander";

/**
 * Parsers for option values: a value that is not one the option takes is refused before the
 * command runs (commander prints "option '--max-points <n>' argument 'abc' is invalid. ...", and
 * the program exits with EXIT.invalid), never read as NaN or a default.
 */

/** A whole number from `min` to `max`. */
export function intOption(min: number, max: number = Number.MAX_SAFE_INTEGER): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^-?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`'${v}' is not a whole number ${max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`}`);
    }
    return n;
  };
}

/** One of a few words. */
export function choiceOption<const T extends readonly string[]>(choices: T): (v: string) => T[number] {
  return (v) => {
    if (!(choices as readonly string[]).includes(v)) throw new InvalidArgumentError(`'${v}' is not one of ${choices.join(", ")}`);
    return v as T[number];
  };
}

/** `host:port`, the port from `minPort` (0: any free port) to 65535; IPv6 literals in brackets. */
export function hostPortOption(minPort = 1): (v: string) => string {
  return (v) => {
    const m = /^(\[[0-9A-Fa-f:.]+\]|[^\s:[\]/]+):(\d{1,5})$/.exec(v);
    if (!m || Number(m[2]) < minPort || Number(m[2]) > 65535) {
      throw new InvalidArgumentError(`'${v}' is not host:port with a port from ${minPort} to 65535 (e.g. 127.0.0.1:7443, [::]:7443)`);
    }
    return v;
  };
}
