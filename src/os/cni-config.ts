/**
 * The CNI network configuration the daemon uses, and whether it can be used right now.
 *
 * Like the CNI libraries, the directory's files with the extensions .conflist, .conf and
 * .json are sorted by name and the first one is the network. A single-plugin .conf is
 * treated as a list of one. If that first file is broken the network is not ready: the
 * daemon does not quietly fall through to the next file, which the operator probably did
 * not mean to use.
 *
 * checkCniReady feeds the Status RPC's NetworkReady condition and `doctor`.
 */

import { constants as fsConstants } from 'node:fs';
import { access, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../errors.js';

export const CNI_CONFIG_EXTENSIONS = ['.conflist', '.conf', '.json'] as const;

/** One plugin entry of a conflist. Only `type` is interpreted here; the rest goes to the plugin. */
export interface CniPluginConfig {
  type: string;
  [key: string]: unknown;
}

export interface CniConflist {
  /** The file it came from. */
  file: string;
  cniVersion: string;
  name: string;
  plugins: CniPluginConfig[];
  /** The list as parsed, for handing to plugins (with `name` and `cniVersion` injected per plugin). */
  raw: Record<string, unknown>;
}

export type CniNotReadyReason =
  | 'CniConfigDirUnreadable'
  | 'NoCniConfig'
  | 'InvalidCniConfig'
  | 'CniPluginMissing';

export interface CniReadiness {
  ready: boolean;
  /** Empty when ready; a CamelCase word for Status conditions otherwise. */
  reason: '' | CniNotReadyReason;
  /** Empty when ready; what is wrong and what to do otherwise. */
  message: string;
  conflist?: CniConflist;
  /** Plugin type → executable found for it (only the ones found). */
  pluginPaths?: Record<string, string>;
}

// libcni's rule for network names.
const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const CNI_VERSION = /^\d+\.\d+\.\d+$/;

/**
 * Parse one CNI config file's text. A .conflist must have `plugins`; any other file is a
 * single plugin config, as libcni's ConfListFromConf treats it.
 */
export function parseCniConfig(text: string, file: string): CniConflist {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`${file}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isObject(document)) {
    throw new InvalidArgumentError(`${file}: expected a JSON object`);
  }
  const isList = file.endsWith('.conflist') || Array.isArray(document.plugins);
  const cniVersion = document.cniVersion;
  if (typeof cniVersion !== 'string' || !CNI_VERSION.test(cniVersion)) {
    throw new InvalidArgumentError(`${file}: "cniVersion" must be a version string such as "1.0.0"`);
  }
  const name = document.name;
  if (typeof name !== 'string' || !NETWORK_NAME.test(name)) {
    throw new InvalidArgumentError(
      `${file}: "name" must be a network name (letters, digits, "_", "-", "."; starting with a letter or digit)`,
    );
  }
  let entries: unknown[];
  if (isList) {
    if (!Array.isArray(document.plugins) || document.plugins.length === 0) {
      throw new InvalidArgumentError(`${file}: "plugins" must be a non-empty array`);
    }
    entries = document.plugins;
  } else {
    entries = [document];
  }
  const plugins = entries.map((entry, index) => checkPlugin(entry, `${file}: plugins[${index}]`));
  const raw = isList ? document : { cniVersion, name, plugins: [document] };
  return { file, cniVersion, name, plugins, raw };
}

function checkPlugin(entry: unknown, where: string): CniPluginConfig {
  if (!isObject(entry)) throw new InvalidArgumentError(`${where}: expected a JSON object`);
  const type = entry.type;
  // The type becomes a file name inside a bin dir: it must not be able to leave it.
  if (typeof type !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(type) || type === '.' || type === '..') {
    throw new InvalidArgumentError(`${where}: "type" must be a plugin executable name such as "bridge"`);
  }
  return entry as CniPluginConfig;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** Config files of a directory in the order CNI libraries consider them. */
export async function listCniConfigFiles(confDir: string): Promise<string[]> {
  const names = await readdir(confDir);
  return names
    .filter((name) => CNI_CONFIG_EXTENSIONS.some((ext) => name.endsWith(ext)))
    .sort()
    .map((name) => join(confDir, name));
}

/** Load the directory's network: the first config file by name. */
export async function loadCniConflist(confDir: string): Promise<CniConflist> {
  let files: string[];
  try {
    files = await listCniConfigFiles(confDir);
  } catch (err) {
    throw new NotFoundError(`CNI config directory ${confDir} cannot be read: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const first = files[0];
  if (first === undefined) {
    throw new NotFoundError(
      `no CNI config (*.conflist, *.conf, *.json) in ${confDir}; copy deploy/cni/10-rootless-cri.conflist there or set network.cni_conf_dir`,
    );
  }
  let text: string;
  try {
    text = await readFile(first, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`${first}: cannot be read: ${(err as Error).message}`, { cause: err });
  }
  return parseCniConfig(text, first);
}

/** The first executable regular file named `type` in the bin dirs, in order. */
export async function findCniPlugin(type: string, binDirs: readonly string[]): Promise<string | undefined> {
  for (const dir of binDirs) {
    const candidate = join(dir, type);
    try {
      const info = await stat(candidate);
      if (!info.isFile()) continue;
      await access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // Not here (or not executable by us): try the next dir, as libcni's FindInPath does.
    }
  }
  return undefined;
}

/**
 * Ready when the directory's first config is valid and every plugin it names is an
 * executable in one of the bin dirs.
 */
export async function checkCniReady(confDir: string, binDirs: readonly string[]): Promise<CniReadiness> {
  let files: string[];
  try {
    files = await listCniConfigFiles(confDir);
  } catch (err) {
    return notReady(
      'CniConfigDirUnreadable',
      `CNI config directory ${confDir} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); create it with a conflist or set network.cni_conf_dir`,
    );
  }
  if (files.length === 0) {
    return notReady(
      'NoCniConfig',
      `no CNI config (*.conflist, *.conf, *.json) in ${confDir}; copy deploy/cni/10-rootless-cri.conflist there or set network.cni_conf_dir`,
    );
  }
  let conflist: CniConflist;
  try {
    conflist = await loadCniConflist(confDir);
  } catch (err) {
    return notReady(
      'InvalidCniConfig',
      `invalid CNI config: ${(err as Error).message}; fix or remove the file`,
    );
  }
  const pluginPaths: Record<string, string> = {};
  const missing: string[] = [];
  for (const plugin of conflist.plugins) {
    const found = await findCniPlugin(plugin.type, binDirs);
    if (found) pluginPaths[plugin.type] = found;
    else missing.push(plugin.type);
  }
  if (missing.length > 0) {
    return {
      ...notReady(
        'CniPluginMissing',
        `CNI plugin${missing.length > 1 ? 's' : ''} ${missing.join(', ')} named by ${conflist.file} not found as an executable in ${binDirs.join(', ')}; install them (sudo apt-get install containernetworking-plugins) or set network.cni_bin_dirs`,
      ),
      conflist,
      pluginPaths,
    };
  }
  return { ready: true, reason: '', message: '', conflist, pluginPaths };
}

function notReady(reason: CniNotReadyReason, message: string): CniReadiness {
  return { ready: false, reason, message };
}
