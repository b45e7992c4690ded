/**
 * A child process for the RPC benchmark: serves Version on a unix socket, either through the
 * real rootless-cri server (edge adapter, logging, metrics) or as a bare grpc-js server.
 *   node dist/bench/grpc-server.js cri|bare SOCKET
 * Prints "ready" once listening; exits on SIGTERM.
 */
import * as grpc from '@grpc/grpc-js';
import { loadCriDefinitions } from '../src/api/proto.js';
import { ReadinessGate } from '../src/cri/edge.js';
import { createCriServer } from '../src/cri/server.js';
import { createLogger } from '../src/log.js';
import { createMetrics } from '../src/metrics.js';
import { createRuntimeInfoHandlers } from '../src/runtime-info/runtime-info.js';

const [mode, socket] = process.argv.slice(2);
if ((mode !== 'cri' && mode !== 'bare') || !socket) {
  process.stderr.write('usage: grpc-server.js cri|bare SOCKET\n');
  process.exit(2);
}

const versionResponse = {
  version: '0.1.0',
  runtime_name: 'rootless-cri',
  runtime_version: '0.1.0',
  runtime_api_version: 'v1',
};

async function main(): Promise<void> {
  if (mode === 'bare') {
    const server = new grpc.Server();
    const { runtimeService } = loadCriDefinitions();
    server.addService(runtimeService, {
      Version: (_call: unknown, cb: grpc.sendUnaryData<typeof versionResponse>) => cb(null, versionResponse),
    } as unknown as grpc.UntypedServiceImplementation);
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    process.on('SIGTERM', () => server.forceShutdown());
  } else {
    // Info level, as the daemon runs by default: Version calls are logged at debug.
    const logger = createLogger({ level: 'info' });
    const readiness = new ReadinessGate();
    const handlers = createRuntimeInfoHandlers({
      health: { check: async () => ({ runtime: { ready: true }, network: { ready: true } }) },
      statusInfo: async () => ({}),
      podCidr: { get: () => '', set: () => undefined },
    });
    const server = createCriServer({ handlers, logger, readiness, metrics: createMetrics().rpc });
    await server.listen(socket!);
    readiness.open();
    process.on('SIGTERM', () => void server.close(100));
  }
  process.stdout.write('ready\n');
}

main().catch((err) => {
  process.stderr.write(`${String(err)}\n`);
  process.exit(1);
});
