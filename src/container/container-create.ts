/**
 * CreateContainer: a container in a ready pod, from an image the node already has (by name,
 * id or digest), created by conmon + crun and waiting for StartContainer.
 *
 * Steps, each pushing its undo on a rollback stack (STYLE.md habit 8):
 *   reserve the name → `creating` record → image marked in use → writable layer
 *   (snapshotter.prepare) → image volumes (image-volumes.ts) → OCI spec (spec-builder) and image VOLUME dirs → log directory →
 *   conmon's cgroup leaf (<pod cgroup>/conmon) → conmon + `crun create` → `created` record.
 * On failure the stack runs in reverse with fresh timeouts, the record is deleted and the
 * name released; a failure of the rollback itself is logged with what is left.
 *
 * Two identical concurrent requests: the name reservation lets exactly one through; the other
 * gets AlreadyExists naming the container that holds the name.
 */
import type { CallContext } from '../api/handlers.js';
import type { RuntimeRequest, RuntimeResponse } from '../api/proto.js';
import { conmonCgroupOf } from '../core/cgroup-layout.js';
import { CONTAINER_RECORD_VERSION, type ContainerRecord, containerName } from '../core/container-store.js';
import { statusOf } from '../core/container-view.js';
import { describeUndoFailures, RollbackStack } from '../core/rollback.js';
import { adjustSpec } from '../core/spec-adjust.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../errors.js';
import { failpoint } from '../failpoint.js';
import type { ContainerDeps } from './container-deps.js';
import { checkExecLimits } from './exec-limits.js';
import { imageVolumeRecords, mountImageVolumes, planImageVolumes } from './image-volumes.js';
import { buildOciSpec, containerLogPath, type ImageRuntimeConfig } from './spec-builder.js';

export function createCreateContainer(deps: ContainerDeps) {
  return async function CreateContainer(
    request: RuntimeRequest<'CreateContainer'>,
    ctx: Pick<CallContext, 'logger'> & Partial<Pick<CallContext, 'signal'>>,
  ): Promise<RuntimeResponse<'CreateContainer'>> {
    const signal = ctx.signal;
    const config = request.config;
    if (!config) throw new InvalidArgumentError('CreateContainer needs a container config');
    if (!config.metadata || config.metadata.name === '') {
      throw new InvalidArgumentError('container metadata.name is required');
    }
    const imageName = config.image?.image ?? '';
    if (imageName === '') {
      throw new InvalidArgumentError('container config image.image is empty: name the image to run');
    }
    if (request.pod_sandbox_id === '') throw new InvalidArgumentError('pod_sandbox_id is required');
    const sandbox = deps.core.sandboxInfo(request.pod_sandbox_id);
    if (!sandbox) {
      throw new NotFoundError(
        `pod sandbox ${JSON.stringify(request.pod_sandbox_id)} does not exist; create it with RunPodSandbox first`,
      );
    }
    if (!sandbox.ready) {
      throw new FailedPreconditionError(
        `pod sandbox ${sandbox.id} is not ready (stopped?); containers can only be created in a ready pod`,
      );
    }
    const logPath = containerLogPath(sandbox.config.log_directory, config.log_path);
    const image = await deps.core.images.resolveImage(imageName).catch((err: unknown) => {
      if (err instanceof NotFoundError) {
        throw new NotFoundError(
          `image ${JSON.stringify(imageName)} is not present on the node; pull it first`,
          {
            cause: err,
          },
        );
      }
      throw err;
    });

    const id = deps.newId();
    const imageVolumes = await planImageVolumes(deps.core.images, id, config.mounts);
    const podMeta = sandbox.config.metadata ?? { name: '', namespace: '', uid: '' };
    const reservedName = containerName(config.metadata, podMeta);
    deps.core.containerNames.reserve(reservedName, id);
    const log = ctx.logger.child({ container: id, pod: sandbox.id });
    const rollback = new RollbackStack(deps.undoTimeoutMs);
    rollback.push('release the container name', async () =>
      deps.core.containerNames.releaseByName(reservedName),
    );
    let record: ContainerRecord = {
      version: CONTAINER_RECORD_VERSION,
      id,
      podSandboxId: sandbox.id,
      state: 'creating',
      reservedName,
      config,
      image: {
        id: image.id,
        requested: imageName,
        repoDigest: image.repoDigests[0] ?? '',
        repoTag: image.repoTags.includes(imageName) ? imageName : (image.repoTags[0] ?? ''),
      },
      logPath,
      bundleDir: deps.core.runtime.paths.bundleDir(id),
      rootfs: '',
      cgroupPath: null,
      conmonCgroup: null,
      createdAt: deps.core.now().toString(),
      startedAt: '0',
      finishedAt: '0',
      pid: 0,
      exitCode: 0,
      reason: '',
      message: '',
      stopSignal: 'SIGTERM',
      warnings: [],
      user: { uid: 0, gid: 0, additionalGids: [], username: null },
      resources: config.linux?.resources ?? null,
      tty: config.tty,
      stdin: config.stdin,
      stdinOnce: config.stdin_once,
      ...(imageVolumes.length > 0 ? { imageVolumes: imageVolumeRecords(imageVolumes) } : {}),
    };
    let step = 'writing the container record';
    try {
      await deps.core.containers.put(record);
      rollback.push('delete the container record', () => deps.core.containers.delete(id));

      signal?.throwIfAborted();
      step = 'marking the image in use and preparing the writable layer';
      // Pushed first: a hold written by a call that then failed is released too; likewise a
      // writable layer. The hold (a record write) and the mount (fuse-overlayfs) are
      // independent: side by side, both settled before a failure is reported.
      rollback.push('release the image', () => deps.core.images.release(image.id, id));
      rollback.push('remove the writable layer', () => deps.core.snapshotter.remove(id));
      // A pod with its own user namespace sees the image's files shifted into it.
      const userns = sandbox.userNamespace;
      const [held, prepared] = await Promise.allSettled([
        deps.core.images.markInUse(image.id, id),
        deps.core.snapshotter.prepare(
          id,
          image.layerDirs,
          userns ? { idMapping: { uids: userns.uids, gids: userns.gids } } : undefined,
        ),
      ]);
      if (held.status === 'rejected') throw held.reason;
      if (prepared.status === 'rejected') throw prepared.reason;
      const { rootfs } = prepared.value;
      record = { ...record, rootfs };
      step = 'mounting image volumes';
      const mounts = await mountImageVolumes(deps.core, id, config.mounts, imageVolumes, rollback);
      failpoint('container.rootfs-mounted');

      step = 'building the OCI spec';
      const built = await buildOciSpec({
        containerId: id,
        config: imageVolumes.length > 0 ? { ...config, mounts } : config,
        sandbox,
        image: {
          config: image.config as { config?: ImageRuntimeConfig | null },
          rootfs,
          name: imageName,
        },
        hostFacts: deps.hostFacts,
        files: deps.files,
      });
      step = 'adjusting the OCI spec';
      const adjusted = await adjustSpec(deps.adjusters, built.spec, {
        containerId: id,
        config,
        sandbox,
        ...(signal ? { signal } : {}),
      });
      // An adjuster (NRI) is told how the creation ends: rolled back here, or created below.
      rollback.push('tell the spec adjusters the container was not created', () => adjusted.settle(false));
      built.spec = adjusted.spec;
      built.warnings.push(...adjusted.warnings);
      // After the adjusters: the environment they add counts too.
      checkExecLimits(built.spec.process, deps.hostFacts.stackSoftLimit);
      for (const warning of built.warnings) log.warn(warning);
      await deps.os.makeVolumeDirs(rootfs, built.imageVolumes);
      if (logPath !== '') await deps.os.prepareLogDirectory(logPath);
      const cgroupPath = built.spec.linux.cgroupsPath ?? null;
      let conmonCgroup: string | null = null;
      let conmonCgroupDir: string | null = null;
      if (cgroupPath !== null && sandbox.cgroupParent !== null) {
        step = 'creating the conmon cgroup';
        conmonCgroup = conmonCgroupOf(sandbox.cgroupParent);
        await deps.core.cgroups.create(conmonCgroup);
        conmonCgroupDir = deps.core.cgroups.dir(conmonCgroup);
      }
      record = {
        ...record,
        cgroupPath,
        conmonCgroup,
        stopSignal: built.stopSignal,
        warnings: built.warnings,
        user: built.user,
      };
      // Not saved here: what a crash from now on leaves is undone by id (recovery's undo of a
      // `creating` record: crun delete, the writable layer, the image hold; the pod's conmon
      // cgroup goes with the pod), so these fields reach disk with the `created` record below.

      signal?.throwIfAborted();
      step = 'creating the container with conmon and crun';
      rollback.push('delete the container from the runtime', async () => {
        await deps.core.runtime.delete(id, true);
        await deps.core.runtime.cleanup(id);
      });
      const { pid } = await deps.core.runtime.create({
        id,
        spec: built.spec,
        logPath,
        stdin: config.stdin,
        stdinOnce: config.stdin_once,
        conmonCgroup: conmonCgroupDir,
        ...(signal ? { signal } : {}),
      });

      failpoint('container.runtime-created');
      step = 'saving the created container';
      record = { ...record, state: 'created', pid };
      await deps.core.containers.put(record);
      rollback.commit();
      await adjusted.settle(true);
    } catch (err) {
      log.warn({ step, err }, 'CreateContainer failed; rolling back');
      const failures = await rollback.unwind();
      if (failures.length > 0) {
        log.error(
          { failures: describeUndoFailures(failures) },
          'rollback of CreateContainer left things behind',
        );
      }
      throw err;
    }
    log.info({ name: config.metadata.name, image: image.id, pid: record.pid }, 'container created');
    deps.core.events.publish('CONTAINER_CREATED_EVENT', id, sandbox.id, statusOf(record), deps.core.now());
    return { container_id: id };
  };
}
