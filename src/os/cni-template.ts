/**
 * The node's CNI config made from a template and the pod CIDR kubelet hands over, as
 * containerd's `conf_template` does: on a node of a cluster the controller-manager gives each
 * node its own pod CIDR (node.spec.podCIDR), kubelet passes it in UpdateRuntimeConfig, and the
 * daemon writes the template with `{{.PodCIDR}}` replaced into the CNI config directory.
 * CniNetwork notices the new file (its stamp changes) and the next pod gets an address of the
 * new range; pods already running keep theirs (each records the config it was set up with, for
 * its DEL).
 *
 * The template is read again at every install, so an operator may change it. A template that
 * cannot be read, lacks the placeholder, names another placeholder or does not give a valid CNI
 * config is refused before anything is written, with the file named.
 */
import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { FailedPreconditionError } from '../errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';
import { parseCniConfig } from './cni-config.js';

export const POD_CIDR_PLACEHOLDER = '{{.PodCIDR}}';
/** The file the daemon owns in the CNI config dir (sorted first among the usual names). */
export const RENDERED_CNI_CONFIG = '10-rootless-cri.conflist';

/**
 * The template with `{{.PodCIDR}}` replaced by the first CIDR of `podCidrs` (kubelet's
 * comma-separated list; the first is the primary family). Throws FailedPrecondition naming
 * `source` when the result is not a usable CNI config.
 */
export function renderCniTemplate(template: string, podCidrs: string, source: string): string {
  const cidr = podCidrs.split(',')[0]?.trim() ?? '';
  if (cidr === '') throw new FailedPreconditionError(`no pod CIDR to write into the CNI template ${source}`);
  if (!template.includes(POD_CIDR_PLACEHOLDER)) {
    throw new FailedPreconditionError(
      `the CNI template ${source} has no ${POD_CIDR_PLACEHOLDER}: put it where the pod subnet goes (e.g. the host-local range's "subnet")`,
    );
  }
  const rendered = template.split(POD_CIDR_PLACEHOLDER).join(cidr);
  const unknown = /\{\{[^}]*\}\}/.exec(rendered)?.[0];
  if (unknown) {
    throw new FailedPreconditionError(
      `the CNI template ${source} names ${unknown}; only ${POD_CIDR_PLACEHOLDER} is replaced`,
    );
  }
  try {
    parseCniConfig(rendered, `${source} with pod CIDR ${cidr}`);
  } catch (err) {
    throw new FailedPreconditionError(
      `the CNI template ${source} does not give a valid CNI config: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  return rendered;
}

export interface CniTemplateInstallerOptions {
  template: string;
  confDir: string;
}

export class CniTemplateInstaller {
  constructor(private readonly options: CniTemplateInstallerOptions) {}

  /** Where the rendered config goes. */
  get target(): string {
    return path.join(this.options.confDir, RENDERED_CNI_CONFIG);
  }

  /** Renders the template for `podCidrs` and replaces the installed config atomically. */
  async install(podCidrs: string): Promise<string> {
    let template: string;
    try {
      template = await readFile(this.options.template, 'utf8');
    } catch (err) {
      throw new FailedPreconditionError(
        `cannot read the CNI template ${this.options.template} (network.cni_conf_template): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
        { cause: err },
      );
    }
    const rendered = renderCniTemplate(template, podCidrs, this.options.template);
    await mkdir(this.options.confDir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.target, rendered, 0o600);
    return this.target;
  }
}
