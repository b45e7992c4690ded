/**
 * Media types of the OCI image spec and of Docker's image manifest v2 (schema 2).
 * Docker's schema 1 types are listed only so they can be recognised and refused clearly.
 */

export const MEDIA_TYPE = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistributable: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  ociLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociLayerNondistributableZstd: 'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  dockerSchema1Manifest: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1SignedManifest: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
} as const;

export const INDEX_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPE.ociIndex,
  MEDIA_TYPE.dockerManifestList,
]);

export const MANIFEST_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPE.ociManifest,
  MEDIA_TYPE.dockerManifest,
]);

export const SCHEMA1_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPE.dockerSchema1Manifest,
  MEDIA_TYPE.dockerSchema1SignedManifest,
]);

export const CONFIG_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPE.ociConfig,
  MEDIA_TYPE.dockerConfig,
]);

export const LAYER_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MEDIA_TYPE.ociLayer,
  MEDIA_TYPE.ociLayerGzip,
  MEDIA_TYPE.ociLayerZstd,
  MEDIA_TYPE.ociLayerNondistributable,
  MEDIA_TYPE.ociLayerNondistributableGzip,
  MEDIA_TYPE.ociLayerNondistributableZstd,
  MEDIA_TYPE.dockerLayerGzip,
  MEDIA_TYPE.dockerLayerForeignGzip,
]);

/** What the client asks a registry for: every manifest kind this runtime can use. */
export const MANIFEST_ACCEPT = [
  MEDIA_TYPE.ociIndex,
  MEDIA_TYPE.dockerManifestList,
  MEDIA_TYPE.ociManifest,
  MEDIA_TYPE.dockerManifest,
].join(', ');

/** `application/json; charset=utf-8` → `application/json`. */
export function baseMediaType(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const base = contentType.split(';', 1)[0]!.trim().toLowerCase();
  return base === '' ? undefined : base;
}
