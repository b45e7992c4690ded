import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { FailedPreconditionError } from '../../src/errors.js';
import { loadCniConflist } from '../../src/os/cni-config.js';
import { CniTemplateInstaller, RENDERED_CNI_CONFIG, renderCniTemplate } from '../../src/os/cni-template.js';

const SHIPPED = fileURLToPath(new URL('../../deploy/cluster/cni.conflist.template', import.meta.url));

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'cni-template-test-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function subnetOf(conflist: { plugins: Record<string, unknown>[] }): string {
  const ipam = conflist.plugins[0]?.ipam as { ranges: { subnet: string }[][] };
  return ipam.ranges[0]![0]!.subnet;
}

describe('renderCniTemplate', () => {
  it('puts the pod CIDR into the shipped template and keeps ipMasq off (the overlay masquerades)', () => {
    const text = renderCniTemplate(readFileSync(SHIPPED, 'utf8'), '10.88.3.0/24', SHIPPED);
    const parsed = JSON.parse(text) as { plugins: { type: string; ipMasq?: boolean }[] };
    expect(subnetOf(parsed)).toBe('10.88.3.0/24');
    expect(parsed.plugins[0]).toMatchObject({ type: 'bridge', ipMasq: false });
    expect(parsed.plugins.map((p) => p.type)).toEqual(['bridge', 'portmap']);
  });

  it('takes the first CIDR of a dual-stack list', () => {
    const text = renderCniTemplate(readFileSync(SHIPPED, 'utf8'), '10.88.1.0/24,fd00:10:88:1::/64', 't');
    expect(subnetOf(JSON.parse(text))).toBe('10.88.1.0/24');
  });

  it('refuses a template without the placeholder, with another placeholder, or giving bad JSON', () => {
    const noPlaceholder = JSON.stringify({ cniVersion: '1.0.0', name: 'n', plugins: [{ type: 'bridge' }] });
    expect(() => renderCniTemplate(noPlaceholder, '10.88.0.0/24', '/t1')).toThrow(
      /\/t1 has no \{\{\.PodCIDR\}\}/,
    );
    const other = noPlaceholder.replace('"n"', '"{{.PodCIDR}}-{{.Routes}}"');
    expect(() => renderCniTemplate(other, '10.88.0.0/24', '/t2')).toThrow(/\/t2 names \{\{\.Routes\}\}/);
    expect(() => renderCniTemplate('{ "subnet": {{.PodCIDR}} }', '10.88.0.0/24', '/t3')).toThrow(
      FailedPreconditionError,
    );
    expect(() => renderCniTemplate('{ "subnet": {{.PodCIDR}} }', '10.88.0.0/24', '/t3')).toThrow(
      /\/t3 does not give a valid CNI config: .*not valid JSON/,
    );
  });
});

describe('CniTemplateInstaller', () => {
  it('writes the config the network loads, and replaces it when the CIDR changes', async () => {
    const confDir = join(dir, 'net.d');
    const installer = new CniTemplateInstaller({ template: SHIPPED, confDir });
    expect(await installer.install('10.88.0.0/24')).toBe(join(confDir, RENDERED_CNI_CONFIG));
    expect(subnetOf(await loadCniConflist(confDir))).toBe('10.88.0.0/24');
    await installer.install('10.88.7.0/24');
    expect(subnetOf(await loadCniConflist(confDir))).toBe('10.88.7.0/24');
    // Nothing but the one file: the temp file of the atomic write is gone.
    expect(readdirSync(confDir)).toEqual([RENDERED_CNI_CONFIG]);
  });

  it('leaves the installed config alone when the template turns bad, and names the template', async () => {
    const template = join(dir, 'template');
    writeFileSync(template, readFileSync(SHIPPED, 'utf8'));
    const confDir = join(dir, 'net.d');
    const installer = new CniTemplateInstaller({ template, confDir });
    await installer.install('10.88.0.0/24');
    writeFileSync(template, '{ broken');
    await expect(installer.install('10.88.1.0/24')).rejects.toThrow(template);
    expect(subnetOf(await loadCniConflist(confDir))).toBe('10.88.0.0/24');
    await expect(
      new CniTemplateInstaller({ template: join(dir, 'missing'), confDir }).install('10.88.0.0/24'),
    ).rejects.toThrow(/cannot read the CNI template .*missing .*ENOENT/);
  });
});

describe('network.cni_conf_template in the config', () => {
  it("moves the default CNI config dir to the daemon's own <root_dir>/cni/net.d", () => {
    const file = join(dir, 'config.toml');
    writeFileSync(file, `root_dir = "${dir}/root"\n[network]\ncni_conf_template = "${SHIPPED}"\n`);
    const config = loadConfig({ file, env: { HOME: dir }, uid: 1000 });
    expect(config.network.cniConfTemplate).toBe(SHIPPED);
    expect(config.network.cniConfDir).toBe(join(dir, 'root', 'cni', 'net.d'));
  });
});
